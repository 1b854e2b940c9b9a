//! The store's test harness: a test body runs against SQLite (a temp dir) and PostgreSQL (a fresh
//! schema, see [`crate::pg`]).

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_store::{Store, StoreConfig};

use crate::pg::PgSchema;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SQLite in a temporary directory.
    Sqlite,
    /// A fresh schema on the shared PostgreSQL server.
    Postgres,
}

/// One test's private database and blob directory. Dropping it drops the PostgreSQL schema.
#[derive(Debug)]
pub struct TestDb {
    /// The backend.
    pub kind: Kind,
    /// The store configuration pointing at this database.
    pub config: StoreConfig,
    /// The temporary directory (SQLite file, model blobs).
    pub dir: tempfile::TempDir,
    // Declared after `config` so the schema outlives nothing that uses it.
    _schema: Option<PgSchema>,
}

impl TestDb {
    /// A fresh database, or `None` if PostgreSQL is unreachable and `FLOTILLA_SKIP_PG=1`.
    pub async fn new(kind: Kind) -> Option<TestDb> {
        let dir = tempfile::tempdir().expect("temp dir");
        match kind {
            Kind::Sqlite => Some(TestDb {
                kind,
                config: StoreConfig::in_dir(dir.path().join("data")),
                dir,
                _schema: None,
            }),
            Kind::Postgres => {
                let schema = PgSchema::create("flotilla_t").await?;
                let config = StoreConfig::new(
                    schema.url().to_owned(),
                    dir.path().join("models").display().to_string(),
                );
                Some(TestDb {
                    kind,
                    config,
                    dir,
                    _schema: Some(schema),
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

/// Defines `mod $name { sqlite(), postgres() }` running the async fn `$name(TestDb)` on each
/// backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $crate::store::run($crate::store::Kind::Sqlite, super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $crate::store::run($crate::store::Kind::Postgres, super::$name).await;
            }
        }
    )*};
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
