//! Retention and erasure in the coordinator: the server's rules (`flotilla server --retain-…`),
//! the scheduled run, and what `POST /v1/retention/run` and `POST /v1/clients/{id}/forget` do
//! (their HTTP handlers are in `admin_governance.rs`). The store does the work in one transaction
//! per run with its audit entries (`flotilla_store::retention`, `flotilla_store::erasure`); this
//! module adds the schedule and drops what this process caches about erased clients.

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{ClientId, RetentionRules, StoreError};

use crate::api::retention::{ClientForgotten, RetentionReport, SkippedItem};
use crate::state::Shared;

/// Retention configuration of a coordinator ([`crate::ServerConfig::retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// What is kept how long; the default keeps everything.
    pub rules: RetentionRules,
    /// How often the coordinator runs retention by itself (`--retention-interval`, default a
    /// day); `None`: only `POST /v1/retention/run` runs it. Never runs while every rule is unset.
    pub interval: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            rules: RetentionRules::default(),
            interval: Some(DEFAULT_INTERVAL),
        }
    }
}

/// Default [`RetentionConfig::interval`]: daily.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(86_400);

/// The audit log's actor of the scheduled runs.
const SCHEDULE_ACTOR: &str = "system:retention";

impl Shared {
    /// Computes the retention plan now and, unless `dry_run`, deletes exactly it, as `actor`.
    pub(crate) async fn retention_run(
        &self,
        dry_run: bool,
        actor: &str,
    ) -> Result<RetentionReport, StoreError> {
        let rules = self.retention;
        let now = crate::clock::now_ms() as i64;
        let plan = self.store.retention_plan(&rules, now).await?;
        let mut report = RetentionReport {
            dry_run,
            computed_at_ms: now,
            rules,
            bytes: plan.iter().filter_map(|i| i.bytes).sum(),
            items: plan,
            skipped: Vec::new(),
            audit_seqs: Vec::new(),
            blob_errors: Vec::new(),
        };
        if dry_run || report.items.is_empty() {
            return Ok(report);
        }
        let applied = self
            .store
            .retention_apply(&report.items, &rules, actor, now)
            .await?;
        // Erased clients' credentials must not stay valid in the cache.
        for item in &applied.deleted {
            if item.kind == flotilla_store::RetentionKind::Client
                && let Ok(id) = item.id.parse()
            {
                self.forget_cached_client(ClientId(id));
            }
        }
        for e in &applied.blob_errors {
            tracing::warn!(error = %e, "retention: a deleted model blob could not be removed yet; the next run retries");
        }
        report.bytes = applied.deleted.iter().filter_map(|i| i.bytes).sum();
        report.items = applied.deleted;
        report.skipped = applied
            .skipped
            .into_iter()
            .map(|(item, why)| SkippedItem { item, why })
            .collect();
        report.audit_seqs = applied.audit_seqs;
        report.blob_errors = applied.blob_errors;
        tracing::info!(
            deleted = report.items.len(),
            bytes = report.bytes,
            actor,
            "retention run"
        );
        Ok(report)
    }

    /// Erases client `id`'s record (the right to erasure), as `actor`.
    pub(crate) async fn erase_client_record(
        &self,
        id: ClientId,
        actor: &str,
    ) -> Result<ClientForgotten, StoreError> {
        let now = crate::clock::now_ms() as i64;
        let f = self.store.forget_client(id, actor, now).await?;
        self.forget_cached_client(id);
        tracing::info!(client = id.0, actor, "client record erased");
        Ok(ClientForgotten {
            client_id: id.0,
            tenant: f.record.tenant,
            name: f.record.name,
            removed: f.removed_fields,
            rounds_rewritten: f.rounds_rewritten,
            kept: vec![
                "committed rounds keep how many clients took part; the client's id in their \
                 participant lists is now 0, so they no longer say who"
                    .to_owned(),
                "the audit log keeps its entries that name the client id (enrollment, revocation, \
                 this erasure): it is append-only and hash-chained, and with the record gone the \
                 id leads to no one"
                    .to_owned(),
                "models are aggregates and hold no single client's update".to_owned(),
            ],
            audit_seq: f.audit_seq,
        })
    }

    /// Drops what this process remembers of a client (its cached credential, its last touch).
    fn forget_cached_client(&self, id: ClientId) {
        self.credentials.forget_client(id);
        if let Ok(mut t) = self.last_touch.lock() {
            t.remove(&id.0);
        }
    }
}

/// Runs retention every `every` (first one after `every`, not at start: a restart loop must not
/// turn into a deletion loop), as [`SCHEDULE_ACTOR`]. Errors are logged; the next tick tries again.
pub(crate) async fn schedule(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = shared.retention_run(false, SCHEDULE_ACTOR).await {
            tracing::warn!(error = %e, "scheduled retention run failed; retrying at the next one");
        }
    }
}
