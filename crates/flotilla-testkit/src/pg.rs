//! A fresh schema per test on the shared PostgreSQL server (`FLOTILLA_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped with the guard.
//!
//! An unreachable server fails the test with what to do, unless `FLOTILLA_SKIP_PG=1`, which skips
//! it (the constructors return `None`).

use sqlx::Connection;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server's URL: `FLOTILLA_TEST_PG_URL` or the local default.
pub fn base_url() -> String {
    std::env::var("FLOTILLA_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A schema of its own on the shared server; dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct PgSchema {
    base: String,
    name: String,
    url: String,
}

impl PgSchema {
    /// Creates `<prefix>_<random hex>`; `None` if the server is unreachable and
    /// `FLOTILLA_SKIP_PG=1` (panics naming the way out otherwise).
    pub async fn create(prefix: &str) -> Option<PgSchema> {
        let base = base_url();
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
        let name = format!("{prefix}_{}", hex::encode(bytes));
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .expect("create test schema");
        conn.close().await.ok();
        // Every connection of the URL works in the schema: sqlx passes `options` to the server.
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Some(PgSchema { base, name, url })
    }

    /// [`PgSchema::create`] for a test without a runtime (on a thread with its own).
    pub fn create_blocking(prefix: &str) -> Option<PgSchema> {
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(PgSchema::create(&prefix))
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// The server URL with this schema as the search path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.base.clone(), self.name.clone());
        // Runs on its own thread and runtime: Drop cannot await, may run inside a runtime, and may
        // run during a panic.
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
            eprintln!("warning: could not drop the test schema {}", self.name);
        }
    }
}
