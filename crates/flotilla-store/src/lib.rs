//! Flotilla's persistence layer: jobs, rounds, clients, enrollment tokens and credentials in SQL
//! (embedded SQLite by default, PostgreSQL for deployments), and model blobs in an object store
//! (a local directory by default, S3-compatible storage with the `s3` feature).
//!
//! # Guarantees
//!
//! * **Exactly-once commits.** [`Store::commit_round`] inserts the round under the primary key
//!   `(job_id, round)` and advances the job in the same transaction: a second commit of a round,
//!   sequential or concurrent, fails with [`StoreError::AlreadyCommitted`] and changes nothing.
//! * **Durable before acknowledged.** Every write is one transaction that has committed when the
//!   call returns (SQLite in WAL mode with `synchronous = FULL`; local blobs are fsynced). After a
//!   `kill -9`, [`Store::open`] on the same URLs and [`Store::load_running_jobs`] give back every
//!   committed round, the model it produced and the state machine snapshot saved with it.
//! * **No commit without its model.** Callers [`Store::put_model`] first, then commit; the commit
//!   checks that the blob exists. A crash between the two leaves an orphan blob, never a commit
//!   without its model. Blob keys are content addresses, so re-putting after a crash is harmless;
//!   [`Store::sweep_orphan_blobs`] removes orphans while no commit is in flight.
//! * **Bounded calls.** Every call waits at most [`StoreConfig::acquire_timeout`] for a database
//!   connection, so a database outage makes calls fail fast rather than hang.
//! * **Writers wait their turn.** On SQLite the writes of a store go through one connection of
//!   their own, handed out first come, first served: a burst of writes (an enrollment storm) queues
//!   instead of being refused with `database is locked` (see [`StoreConfig::acquire_timeout`]).
//! * **Secrets are never stored.** Enrollment token secrets and client credentials are 32 bytes
//!   from the operating system's RNG; the database keeps only their SHA-256. Tokens have limited
//!   uses and an expiry; credentials have an optional expiry and can be revoked.
//!
//! # Backends
//!
//! One implementation over [`sqlx::AnyPool`]: the SQL that reads and writes data is portable
//! (`$N` placeholders, `RETURNING`, integer and text columns only) and runs unchanged on both
//! backends, so both are tested by the same tests. Only the DDL differs, in the versioned
//! migrations under `migrations/sqlite/` and `migrations/postgres/`, embedded in the binary and
//! run by [`Store::open`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod approvals;
mod audit;
mod audit_checks;
mod audit_sign;
mod audit_wiring;
mod blobs;
mod db_ids;
mod error;
mod health;
mod job_reason;
mod layout_eval;
mod policies;
mod principals;
mod recovery;
mod registry;
mod retention;
mod round_lookup;
mod sweep;
mod types;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

pub use approvals::{ApprovalState, JobApproval, NewJob};
pub use audit::{
    AuditEntry, AuditEvent, AuditOutcome, AuditProblem, AuditVerification, GENESIS_HASH,
    MAX_DETAILS_BYTES,
};
pub use audit_checks::SignedVerification;
pub use audit_sign::{AuditSigner, CHECKPOINT_ACTION, Checkpoint, signed_message};
pub use audit_wiring::AuditState;
pub use error::{Result, StoreError};
pub use job_reason::MAX_STATE_REASON_BYTES;
pub use policies::{
    MAX_POLICY_TEXT_BYTES, MAX_POLICY_VERSIONS_LISTED, PolicyVersion, PolicyVersionInfo,
};
pub use principals::{
    ALL_TENANTS, NewPrincipal, PRINCIPAL_TOKEN_PREFIX, PrincipalKind, PrincipalRecord, ROLE_NAMES,
    RoleGrant, TenantSettings, check_principal_name,
};
pub use registry::{
    Canary, EvalKind, EvalSubject, MAX_VERSIONS_PER_MODEL, ModelVersion, NewModelVersion,
    RegisteredModel, Rollback, StoredEvaluation,
};
pub use retention::erasure::{ERASED_FIELDS, ForgottenClient};
pub use retention::{RetentionApplied, RetentionItem, RetentionKind, RetentionRules};
pub use types::{
    ClientId, ClientRecord, CommittedRound, DpCharge, Enrollment, JobId, JobRecord, JobState,
    NewEnrollmentToken, ParseJobStateError, RecoveredJob, RoundCommit, TokenId,
};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Prefix of enrollment token secrets (makes a leaked secret recognisable).
const TOKEN_PREFIX: &str = "flt_enroll_";
/// Prefix of client credentials.
const CREDENTIAL_PREFIX: &str = "flt_client_";

/// Which SQL database a [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (`sqlite://…`).
    Sqlite,
    /// PostgreSQL (`postgres://…` or `postgresql://…`).
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedDatabaseUrl(url.to_owned()))
        }
    }
}

/// Where a [`Store`] keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `sqlite://DIR/flotilla.db?mode=rwc` (the parent directory is created), or
    /// `postgres://user@host:port/db` (optionally `?options=-c%20search_path%3Dschema`).
    pub database_url: String,
    /// Model blobs: a directory path, `file:///abs/dir`, or `s3://bucket/prefix` (needs the `s3`
    /// feature; credentials, region and endpoint come from the `AWS_*` environment variables).
    pub blob_url: String,
    /// Maximum number of pooled database connections. On SQLite these serve reads, and writes have
    /// one more connection of their own (SQLite lets one writer in at a time anyway).
    pub max_connections: u32,
    /// How long a call waits for a database connection before it fails with
    /// [`StoreError::Database`] (`PoolTimedOut`), and SQLite's busy timeout (default
    /// [`DEFAULT_CALL_TIMEOUT`]). While the database is down every call fails within this time
    /// instead of waiting for the outage to end.
    ///
    /// On SQLite a write waits here, in arrival order, for the store's write connection; the busy
    /// timeout then only matters when another process writes the same file. (Waiting on the busy
    /// timeout alone was not fair: SQLite polls the lock with sleeps growing to 100 ms, so under a
    /// burst of writes one that had waited longest could lose every poll to newer ones for the
    /// whole timeout and fail with `database is locked`.)
    pub acquire_timeout: Duration,
}

/// Default [`StoreConfig::acquire_timeout`]: 2 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl StoreConfig {
    /// The embedded default inside a data directory: `DIR/flotilla.db` and `DIR/models/`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        StoreConfig {
            database_url: format!("sqlite://{}?mode=rwc", dir.join("flotilla.db").display()),
            blob_url: dir.join("models").display().to_string(),
            max_connections: 8,
            acquire_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Any database and blob store.
    pub fn new(database_url: impl Into<String>, blob_url: impl Into<String>) -> Self {
        StoreConfig {
            database_url: database_url.into(),
            blob_url: blob_url.into(),
            max_connections: 8,
            acquire_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// The persistence layer. Cheap to clone (connection pools and an object store handle).
#[derive(Debug, Clone)]
pub struct Store {
    /// Reads, and PostgreSQL's writes.
    pool: AnyPool,
    /// Every write, in a transaction of [`Store::begin_write`] or as one statement: on SQLite a
    /// pool of one connection, whose fair queue lines writers up in arrival order instead of
    /// letting them poll SQLite's lock against each other (see [`StoreConfig::acquire_timeout`]);
    /// on PostgreSQL `pool` itself.
    writer: AnyPool,
    backend: Backend,
    blobs: blobs::Blobs,
}

const CLIENT_COLUMNS: &str =
    "id, tenant, revoked, created_at_ms, last_seen_ms, credential_expires_at_ms, client_name";
const JOB_COLUMNS: &str = "id, tenant, name, spec_json, state, rounds_total, rounds_completed, \
                           model_version, model_blob_key, created_at_ms, updated_at_ms, state_reason";
const ROUND_COLUMNS: &str = "job_id, round, attempt, model_version, participants_json, \
                             metrics_json, model_blob_key, committed_at_ms, eval_json";

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    pub async fn open(config: &StoreConfig) -> Result<Self> {
        let backend = Backend::from_url(&config.database_url)?;
        sqlx::any::install_default_drivers();
        if backend == Backend::Sqlite {
            create_sqlite_parent(&config.database_url).await?;
        }
        let timeout = config.acquire_timeout.max(Duration::from_millis(1));
        // A dead database is found out when a connection is taken (sqlx pings idle ones), so the
        // acquire timeout bounds every call during an outage; new connections are retried within it.
        let mut options = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(timeout);
        if backend == Backend::Sqlite {
            let busy_ms = timeout.as_millis().min(i32::MAX as u128);
            // FULL is SQLite's compiled-in default, but durability must not depend on a build
            // flag: in WAL mode it makes every commit survive power loss, not just kill -9.
            // The busy timeout bounds a wait for another writer like the acquire timeout does.
            options = options.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    // A bounded page cache per connection (256 KiB): with SQLite's default (2 MiB)
                    // the coordinator's RSS grew with the database, ~4 KB per committed round,
                    // until every pooled connection had cached 2 MiB. The OS caches the file.
                    conn.execute("PRAGMA cache_size = -256").await?;
                    conn.execute(format!("PRAGMA busy_timeout = {busy_ms}").as_str())
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.clone().connect(&config.database_url).await?;
        match backend {
            Backend::Sqlite => {
                // WAL lets readers run during a commit; it is a property of the database file.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .fetch_optional(&pool)
                    .await?;
                SQLITE_MIGRATOR.run(&pool).await?;
            }
            Backend::Postgres => POSTGRES_MIGRATOR.run(&pool).await?,
        }
        let writer = match backend {
            // sqlx's pools hand connections out first come, first served (`fair`).
            Backend::Sqlite => {
                options
                    .max_connections(1)
                    .connect(&config.database_url)
                    .await?
            }
            // Row locks: writers of different rows run in parallel, waiters queue in the server.
            Backend::Postgres => pool.clone(),
        };
        let blobs = blobs::Blobs::open(&config.blob_url).await?;
        Ok(Store {
            pool,
            writer,
            backend,
            blobs,
        })
    }

    /// [`Store::open`] with [`StoreConfig::in_dir`].
    pub async fn open_in_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(&StoreConfig::in_dir(dir)).await
    }

    /// The SQL backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the connection pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Begins a transaction that will write, on the write connection (SQLite: in arrival order,
    /// see [`Store::writer`]). On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so a
    /// writer in another process is waited for on the busy timeout instead of failing when a read
    /// lock cannot be upgraded.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    // ----- enrollment tokens and clients -------------------------------------------------------

    /// Creates an enrollment token for `tenant`, valid for `uses` enrollments until
    /// `expires_at_ms` (Unix milliseconds, exclusive). Only the secret's SHA-256 is stored. Audited
    /// (`enrollment_token.created` by `actor`) in the same transaction.
    pub async fn create_enrollment_token(
        &self,
        tenant: &str,
        uses: u32,
        expires_at_ms: i64,
        actor: &str,
    ) -> Result<NewEnrollmentToken> {
        check_tenant(tenant)?;
        if uses == 0 {
            return Err(StoreError::InvalidArgument(
                "an enrollment token needs at least one use".into(),
            ));
        }
        let secret = new_secret(TOKEN_PREFIX)?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO enrollment_tokens (tenant, secret_sha256, uses_left, expires_at_ms, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(tenant)
        .bind(sha256_hex(&secret))
        .bind(i64::from(uses))
        .bind(expires_at_ms)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id = TokenId::from_db(row.try_get("id")?)?;
        audit_wiring::token_created(&mut tx, actor, tenant, id, uses, expires_at_ms, now).await?;
        tx.commit().await?;
        Ok(NewEnrollmentToken { id, secret })
    }

    /// Redeems an enrollment token at time `now_ms`: atomically uses it up by one and enrolls a new
    /// client of the token's tenant with a fresh credential (only its SHA-256 is stored).
    ///
    /// The credential is valid until `credential_expires_at_ms` (Unix milliseconds, exclusive), or
    /// forever if `None`; an expiry that is not after `now_ms` is [`StoreError::InvalidArgument`].
    ///
    /// Refuses with [`StoreError::UnknownToken`], [`StoreError::TokenExpired`] or
    /// [`StoreError::TokenUsedUp`] (in that order of precedence), changing nothing.
    pub async fn redeem_enrollment_token(
        &self,
        secret: &str,
        now_ms: i64,
        credential_expires_at_ms: Option<i64>,
    ) -> Result<Enrollment> {
        self.redeem_enrollment_token_named(secret, None, now_ms, credential_expires_at_ms)
            .await
    }

    /// [`Store::redeem_enrollment_token`], recording the name the client gave itself (shown to
    /// operators by the admin API; not unique, not an identity). An empty name is stored as none.
    pub async fn redeem_enrollment_token_named(
        &self,
        secret: &str,
        client_name: Option<&str>,
        now_ms: i64,
        credential_expires_at_ms: Option<i64>,
    ) -> Result<Enrollment> {
        let client_name = client_name.filter(|n| !n.is_empty());
        if let Some(exp) = credential_expires_at_ms
            && exp <= now_ms
        {
            return Err(StoreError::InvalidArgument(format!(
                "credential expiry {exp} ms is not after the enrollment time {now_ms} ms"
            )));
        }
        let hash = sha256_hex(secret);
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
             WHERE secret_sha256 = $1 AND uses_left > 0 AND expires_at_ms > $2 \
             RETURNING id, tenant",
        )
        .bind(&hash)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(used) = used else {
            let row = sqlx::query(
                "SELECT id, uses_left, expires_at_ms FROM enrollment_tokens WHERE secret_sha256 = $1",
            )
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StoreError::UnknownToken);
            };
            let token_id = TokenId::from_db(row.try_get("id")?)?;
            let expires_at_ms: i64 = row.try_get("expires_at_ms")?;
            return Err(if expires_at_ms <= now_ms {
                StoreError::TokenExpired {
                    token_id,
                    expires_at_ms,
                }
            } else {
                StoreError::TokenUsedUp { token_id }
            });
        };
        let token_id: i64 = used.try_get("id")?;
        let tenant: String = used.try_get("tenant")?;
        let credential = new_secret(CREDENTIAL_PREFIX)?;
        let row = sqlx::query(
            "INSERT INTO clients (tenant, credential_sha256, enrollment_token, revoked, created_at_ms, \
             credential_expires_at_ms, client_name) VALUES ($1, $2, $3, 0, $4, $5, $6) RETURNING id",
        )
        .bind(&tenant)
        .bind(sha256_hex(&credential))
        .bind(token_id)
        .bind(now_ms)
        .bind(credential_expires_at_ms)
        .bind(client_name)
        .fetch_one(&mut *tx)
        .await?;
        let client_id = ClientId::from_db(row.try_get("id")?)?;
        audit_wiring::enrolled(&mut tx, client_id, &tenant, token_id, client_name, now_ms).await?;
        tx.commit().await?;
        Ok(Enrollment {
            client_id,
            tenant,
            credential,
            credential_expires_at_ms,
        })
    }

    /// [`Store::authenticate_at`] at the current system time.
    pub async fn authenticate(&self, credential: &str) -> Result<ClientRecord> {
        self.authenticate_at(credential, now_ms()).await
    }

    /// Looks up the client a credential belongs to, at time `now_ms` (Unix milliseconds).
    ///
    /// Refuses unknown credentials ([`StoreError::UnknownCredential`]), revoked clients
    /// ([`StoreError::ClientRevoked`]) and credentials whose expiry is at or before `now_ms`
    /// ([`StoreError::CredentialExpired`]), in that order of precedence: a revoked client is told it
    /// is revoked even once its credential has also expired, so it does not try to enroll again.
    /// The first refusal of an expired credential writes its audit entry (once per credential).
    pub async fn authenticate_at(&self, credential: &str, now_ms: i64) -> Result<ClientRecord> {
        let row = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE credential_sha256 = $1"
        ))
        .bind(sha256_hex(credential))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::UnknownCredential)?;
        let client = client_from_row(&row)?;
        if client.revoked {
            return Err(StoreError::ClientRevoked(client.client_id));
        }
        if let Some(expired_at_ms) = client.credential_expires_at_ms
            && expired_at_ms <= now_ms
        {
            self.audit_credential_expired(&client, expired_at_ms, now_ms)
                .await?;
            return Err(StoreError::CredentialExpired {
                client_id: client.client_id,
                expired_at_ms,
            });
        }
        Ok(client)
    }

    /// Revokes a client's credential for good; audited (`client.revoked` by `actor`) in the same
    /// transaction. Revoking twice is not an error (and writes no second entry).
    pub async fn revoke_client(&self, client_id: ClientId, actor: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE clients SET revoked = 1 WHERE id = $1 AND revoked = 0 RETURNING tenant",
        )
        .bind(client_id.to_db()?)
        .fetch_optional(&mut *tx)
        .await?;
        match done {
            Some(row) => {
                let tenant: String = row.try_get("tenant")?;
                audit_wiring::revoked(&mut tx, actor, client_id, &tenant).await?;
                tx.commit().await?;
            }
            None => {
                drop(tx);
                self.get_client(client_id).await?;
            }
        }
        Ok(())
    }

    /// Records that a client was seen at `now_ms` (Unix milliseconds).
    pub async fn touch_client(&self, client_id: ClientId, now_ms: i64) -> Result<()> {
        let done = sqlx::query("UPDATE clients SET last_seen_ms = $2 WHERE id = $1")
            .bind(client_id.to_db()?)
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::ClientNotFound(client_id));
        }
        Ok(())
    }

    /// One client, revoked or not.
    pub async fn get_client(&self, client_id: ClientId) -> Result<ClientRecord> {
        let row = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1"
        ))
        .bind(client_id.to_db()?)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::ClientNotFound(client_id))?;
        client_from_row(&row)
    }

    /// All clients (of one tenant, if given), revoked ones included, in enrollment order.
    pub async fn list_clients(&self, tenant: Option<&str>) -> Result<Vec<ClientRecord>> {
        let columns = format!("SELECT {CLIENT_COLUMNS} FROM clients");
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!("{columns} WHERE tenant = $1 ORDER BY id"))
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{columns} ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(client_from_row).collect()
    }

    // ----- jobs ---------------------------------------------------------------------------------

    /// Creates a job in state [`JobState::Pending`], without a recorded layout (see
    /// [`Store::create_job_with_layout`]).
    pub async fn create_job(
        &self,
        tenant: &str,
        name: &str,
        spec: &serde_json::Value,
        rounds_total: u64,
    ) -> Result<JobId> {
        self.create_job_with_layout(tenant, name, spec, rounds_total, None)
            .await
    }

    /// One job.
    pub async fn get_job(&self, job_id: JobId) -> Result<JobRecord> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(job_id.to_db()?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        job_from_row(&row, "")
    }

    /// All jobs (of one tenant, if given), in creation order.
    pub async fn list_jobs(&self, tenant: Option<&str>) -> Result<Vec<JobRecord>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 ORDER BY id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(|r| job_from_row(r, "")).collect()
    }

    /// Moves a job to `to`. Allowed: `pending → running`, `pending | running → failed | cancelled`,
    /// and staying in the current state (a no-op). `completed` is only reached by committing the
    /// last round. Anything else is [`StoreError::InvalidTransition`]. Atomic: the check and the
    /// update are one statement.
    pub async fn set_job_state(&self, job_id: JobId, to: JobState) -> Result<()> {
        // A reason is only ever recorded with a terminal state, which nothing leaves, so moving
        // without one never erases a reason that was shown.
        self.set_job_state_with_reason(job_id, to, None, "system")
            .await
    }

    // ----- rounds -------------------------------------------------------------------------------

    /// Commits `round` of a running job, exactly once.
    ///
    /// In one transaction: inserts the round (the primary key `(job_id, round)` refuses a second
    /// commit with [`StoreError::AlreadyCommitted`]), advances the job's `rounds_completed` and
    /// `model_version` to `round` and its current model to `commit.model_blob_key`, replaces its
    /// machine snapshot, and marks the job [`JobState::Completed`] when this was the last round.
    /// Audited in the same transaction: the DP charge of the round ([`RoundCommit::dp_charge`])
    /// and the job's completion. On any error nothing changes.
    ///
    /// Also refused: an unknown job ([`StoreError::JobNotFound`]), a job that is not running
    /// ([`StoreError::JobNotRunning`]), a round other than `rounds_completed + 1`
    /// ([`StoreError::RoundOutOfOrder`]), a model key whose blob does not exist
    /// ([`StoreError::BlobNotFound`]: put the model first) and a snapshot that is not JSON.
    pub async fn commit_round(
        &self,
        job_id: JobId,
        round: u64,
        commit: &RoundCommit<'_>,
    ) -> Result<CommittedRound> {
        if round == 0 || commit.attempt == 0 {
            return Err(StoreError::InvalidArgument(
                "rounds and attempts start at 1".into(),
            ));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(commit.machine_state_json).map_err(|e| {
            StoreError::InvalidArgument(format!("machine snapshot is not JSON: {e}"))
        })?;
        let metrics_json = serde_json::to_string(commit.metrics)
            .map_err(|e| StoreError::InvalidArgument(format!("round metrics: {e}")))?;
        let participants_json = serde_json::to_string(commit.participants)
            .map_err(|e| StoreError::InvalidArgument(format!("participants: {e}")))?;
        if !self.blobs.exists(commit.model_blob_key).await? {
            return Err(StoreError::BlobNotFound(commit.model_blob_key.to_owned()));
        }
        let db_job = job_id.to_db()?;
        let db_round = to_db(round, "round")?;
        let committed_at_ms = now_ms();

        let mut tx = self.begin_write().await?;
        // The insert goes first: it is what serialises concurrent commits of the same round (the
        // loser blocks on the key until the winner commits, then fails), and a duplicate is
        // reported as such even if the job has moved on since.
        let inserted = sqlx::query(
            "INSERT INTO rounds (job_id, round, attempt, model_version, participants_json, \
             metrics_json, model_blob_key, committed_at_ms) VALUES ($1, $2, $3, $2, $4, $5, $6, $7)",
        )
        .bind(db_job)
        .bind(db_round)
        .bind(i64::from(commit.attempt))
        .bind(&participants_json)
        .bind(&metrics_json)
        .bind(commit.model_blob_key)
        .bind(committed_at_ms)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(db)) = &inserted {
            if db.is_unique_violation() {
                return Err(StoreError::AlreadyCommitted { job_id, round });
            }
            if db.is_foreign_key_violation() {
                return Err(StoreError::JobNotFound(job_id));
            }
        }
        inserted?;
        let advanced = sqlx::query(
            "UPDATE jobs SET rounds_completed = $2, model_version = $2, model_blob_key = $3, \
             machine_state_json = $4, updated_at_ms = $5, \
             state = CASE WHEN $2 >= rounds_total THEN 'completed' ELSE state END \
             WHERE id = $1 AND state = 'running' AND rounds_completed = $6",
        )
        .bind(db_job)
        .bind(db_round)
        .bind(commit.model_blob_key)
        .bind(commit.machine_state_json)
        .bind(committed_at_ms)
        .bind(db_round - 1)
        .execute(&mut *tx)
        .await?;
        if advanced.rows_affected() != 1 {
            let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(db_job)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::JobNotFound(job_id))?;
            let job = job_from_row(&row, "")?;
            // Dropping `tx` rolls the round insert back.
            return Err(if job.state != JobState::Running {
                StoreError::JobNotRunning {
                    job_id,
                    state: job.state,
                }
            } else {
                StoreError::RoundOutOfOrder {
                    job_id,
                    expected: job.rounds_completed + 1,
                    got: round,
                }
            });
        }
        audit_wiring::round_committed(&mut tx, job_id, round, commit, committed_at_ms).await?;
        tx.commit().await?;
        Ok(CommittedRound {
            job_id,
            round,
            attempt: commit.attempt,
            model_version: round,
            participants: commit.participants.to_vec(),
            metrics: commit.metrics.clone(),
            model_blob_key: commit.model_blob_key.to_owned(),
            committed_at_ms,
        })
    }

    /// `Err(JobNotFound)` unless the job exists: after an update that changed no row, it tells a
    /// missing job from a refused change.
    pub(crate) async fn require_job(&self, job_id: JobId) -> Result<()> {
        sqlx::query("SELECT id FROM jobs WHERE id = $1")
            .bind(job_id.to_db()?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        Ok(())
    }

    /// Every committed round of a job, in round order.
    pub async fn job_history(&self, job_id: JobId) -> Result<Vec<CommittedRound>> {
        let db_job = job_id.to_db()?;
        // One read transaction so the existence check and the rows agree.
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT id FROM jobs WHERE id = $1")
            .bind(db_job)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::JobNotFound(job_id));
        }
        let rows = sqlx::query(&format!(
            "SELECT {ROUND_COLUMNS} FROM rounds WHERE job_id = $1 ORDER BY round"
        ))
        .bind(db_job)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|r| round_from_row(r, "")).collect()
    }

    // ----- model blobs --------------------------------------------------------------------------

    /// Stores version `version` of a job's model and returns its key
    /// (`job-<id>/v<version>-<sha256>.bin`). Idempotent: putting the same bytes again returns the
    /// same key and rewrites nothing. Call this *before* [`Store::commit_round`].
    pub async fn put_model(&self, job_id: JobId, version: u64, bytes: Vec<u8>) -> Result<String> {
        self.blobs.put(job_id, version, bytes).await
    }

    /// Reads a model blob, checking its content against the SHA-256 in its key.
    pub async fn get_model(&self, key: &str) -> Result<Vec<u8>> {
        self.blobs.get(key).await
    }
}

// ----- helpers ----------------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `prefix` followed by 32 bytes from the operating system's RNG, hex-encoded.
fn new_secret(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// Tenants name jobs and tokens and appear in logs and listings: the rule of
/// `flotilla_core::names::check_tenant` (length, characters) is enforced where they are created.
fn check_tenant(tenant: &str) -> Result<()> {
    flotilla_core::names::check_tenant(tenant)
        .map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

fn to_db(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::InvalidArgument(format!("{what} {v} out of range")))
}

fn from_db(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what} {v}")))
}

fn json_from_db(text: &str, what: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn client_from_row(row: &AnyRow) -> Result<ClientRecord> {
    let revoked: i64 = row.try_get("revoked")?;
    Ok(ClientRecord {
        client_id: ClientId::from_db(row.try_get("id")?)?,
        tenant: row.try_get("tenant")?,
        revoked: revoked != 0,
        created_at_ms: row.try_get("created_at_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        credential_expires_at_ms: row.try_get("credential_expires_at_ms")?,
        name: row.try_get("client_name")?,
    })
}

fn job_from_row(row: &AnyRow, p: &str) -> Result<JobRecord> {
    let col = |name: &str| format!("{p}{name}");
    let state: String = row.try_get(col("state").as_str())?;
    let spec: String = row.try_get(col("spec_json").as_str())?;
    Ok(JobRecord {
        id: JobId::from_db(row.try_get(col("id").as_str())?)?,
        tenant: row.try_get(col("tenant").as_str())?,
        name: row.try_get(col("name").as_str())?,
        spec: json_from_db(&spec, "job spec")?,
        state: state
            .parse()
            .map_err(|e: ParseJobStateError| StoreError::Corrupt(e.to_string()))?,
        rounds_total: from_db(row.try_get(col("rounds_total").as_str())?, "rounds_total")?,
        rounds_completed: from_db(
            row.try_get(col("rounds_completed").as_str())?,
            "rounds_completed",
        )?,
        model_version: from_db(row.try_get(col("model_version").as_str())?, "model_version")?,
        model_blob_key: row.try_get(col("model_blob_key").as_str())?,
        created_at_ms: row.try_get(col("created_at_ms").as_str())?,
        updated_at_ms: row.try_get(col("updated_at_ms").as_str())?,
        state_reason: row.try_get(col("state_reason").as_str())?,
    })
}

fn round_from_row(row: &AnyRow, p: &str) -> Result<CommittedRound> {
    let col = |name: &str| format!("{p}{name}");
    let participants: String = row.try_get(col("participants_json").as_str())?;
    let metrics: String = row.try_get(col("metrics_json").as_str())?;
    let eval: Option<String> = row.try_get(col("eval_json").as_str())?;
    let attempt: i64 = row.try_get(col("attempt").as_str())?;
    Ok(CommittedRound {
        job_id: JobId::from_db(row.try_get(col("job_id").as_str())?)?,
        round: from_db(row.try_get(col("round").as_str())?, "round")?,
        attempt: u32::try_from(attempt)
            .map_err(|_| StoreError::Corrupt(format!("attempt {attempt} out of range")))?,
        model_version: from_db(row.try_get(col("model_version").as_str())?, "model_version")?,
        participants: serde_json::from_str(&participants)
            .map_err(|e| StoreError::Corrupt(format!("round participants: {e}")))?,
        metrics: layout_eval::with_eval(json_from_db(&metrics, "round metrics")?, eval.as_deref())?,
        model_blob_key: row.try_get(col("model_blob_key").as_str())?,
        committed_at_ms: row.try_get(col("committed_at_ms").as_str())?,
    })
}

/// Creates the directory that will hold a `sqlite://PATH?…` database file.
async fn create_sqlite_parent(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or("");
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| StoreError::Io {
                path: parent.display().to_string(),
                source,
            })?;
    }
    Ok(())
}
