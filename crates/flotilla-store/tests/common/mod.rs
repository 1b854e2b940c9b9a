//! Test harness: runs a test body against SQLite (a temp dir) and PostgreSQL (a fresh schema).
#![allow(dead_code)]

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_store::{Store, StoreConfig};
use sqlx::Connection;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One test's private database and blob directory. Dropping it drops the PostgreSQL schema.
pub struct TestDb {
    pub kind: Kind,
    pub config: StoreConfig,
    pub dir: tempfile::TempDir,
    admin_url: String,
    schema: Option<String>,
}

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pg_base_url() -> String {
    std::env::var("FLOTILLA_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

impl TestDb {
    /// A fresh database, or `None` if PostgreSQL is unreachable and `FLOTILLA_SKIP_PG=1`.
    pub async fn new(kind: Kind) -> Option<TestDb> {
        let dir = tempfile::tempdir().expect("temp dir");
        match kind {
            Kind::Sqlite => {
                let config = StoreConfig::in_dir(dir.path().join("data"));
                Some(TestDb {
                    kind,
                    config,
                    dir,
                    admin_url: String::new(),
                    schema: None,
                })
            }
            Kind::Postgres => {
                let base = pg_base_url();
                let mut conn = match sqlx::PgConnection::connect(&base).await {
                    Ok(c) => c,
                    Err(e) if std::env::var("FLOTILLA_SKIP_PG").as_deref() == Ok("1") => {
                        eprintln!(
                            "skipping PostgreSQL test: {base} unreachable ({e}) and FLOTILLA_SKIP_PG=1"
                        );
                        return None;
                    }
                    Err(e) => panic!(
                        "PostgreSQL test server {base} is unreachable: {e}. Start it (CI does), point \
                         FLOTILLA_TEST_PG_URL at one, or set FLOTILLA_SKIP_PG=1 to skip the PostgreSQL tests"
                    ),
                };
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).expect("randomness");
                let schema = format!("flotilla_t_{}", hex::encode(bytes));
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test schema");
                conn.close().await.ok();
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                let config = StoreConfig::new(url, dir.path().join("models").display().to_string());
                Some(TestDb {
                    kind,
                    config,
                    dir,
                    admin_url: base,
                    schema: Some(schema),
                })
            }
        }
    }

    /// Opens a store on this database.
    pub async fn open(&self) -> Store {
        Store::open(&self.config).await.expect("open store")
    }

    /// A raw connection pool on the same database, for inspecting rows.
    pub async fn raw(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.config.database_url)
            .await
            .expect("raw pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let url = self.admin_url.clone();
        // Runs on its own thread and runtime: Drop cannot await, and may run during a panic.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop a flotilla_t_* test schema");
        }
    }
}

/// Runs `body` on a fresh database of `kind` (nothing, if PostgreSQL is skipped).
pub async fn run<F, Fut>(kind: Kind, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(db) = TestDb::new(kind).await {
        body(db).await;
    }
}

/// Defines `mod $name { sqlite(), postgres() }` running `$body` on each backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $crate::common::run($crate::common::Kind::Sqlite, super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $crate::common::run($crate::common::Kind::Postgres, super::$name).await;
            }
        }
    )*};
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
