//! Federated evaluation campaigns: a model (a registry version or a job's committed round) sent to
//! a sample of a tenant's clients, who evaluate it on their local data (`STAGE_EVALUATE` tasks at
//! check-in) and report loss, accuracy, sample count and cohort labels (`SubmitEvaluation`). The
//! campaign ends when the requested number of clients reported or its deadline passed; its
//! [`flotilla_registry::EvalSummary`] (overall, per cohort, fairness) is then stored.
//!
//! In memory and bounded: at most [`MAX_CAMPAIGNS`] campaigns run at once, each asks at most
//! [`MAX_EVAL_CLIENTS`] clients (plus the over-selection, [`ask_limit`]); finished results are kept
//! for [`MAX_FINISHED`] campaigns (and in the store for good). A client is asked at most once per
//! campaign and may report once.
//!
//! This module is the book-keeping only (no store, no `Shared`): `fed_eval_run.rs` prepares the
//! task a campaign hands out (the model's description, loaded once), hands tasks out at check-in,
//! and finishes campaigns (summary, store).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_registry::{ClientEvalReport, EvalSummary};
use flotilla_store::{EvalKind, EvalSubject};

use crate::clock::now_ms;

/// Most campaigns running at once (across tenants).
pub(crate) const MAX_CAMPAIGNS: usize = 64;
/// Most clients one campaign asks.
pub(crate) const MAX_EVAL_CLIENTS: u32 = 10_000;
/// Finished campaigns remembered in memory for `status`.
pub(crate) const MAX_FINISHED: usize = 256;
/// Longest deadline of a campaign.
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// A campaign to start.
#[derive(Debug, Clone)]
pub(crate) struct EvalRequest {
    /// Only this tenant's clients evaluate (the subject's tenant).
    pub tenant: String,
    /// What is evaluated.
    pub subject: EvalSubject,
    /// Why (stored with the result).
    pub kind: EvalKind,
    /// Clients to hear from (1 ..= [`MAX_EVAL_CLIENTS`]).
    pub clients: u32,
    /// How long to wait for them; the campaign then ends with whoever reported.
    pub deadline: Duration,
    /// Fairness threshold: cohorts below this accuracy are listed.
    pub threshold: Option<f64>,
}

/// Where a campaign stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EvalStatus {
    /// Still collecting: clients asked so far and reports received.
    Running {
        /// Tasks handed out.
        asked: u32,
        /// Reports received.
        reported: u32,
    },
    /// Ended; the summary is stored under `stored_id` (`None`: it could not be stored, see the
    /// coordinator's log).
    Done {
        /// The result.
        summary: EvalSummary,
        /// The store's evaluation id.
        stored_id: Option<u64>,
    },
    /// Ended without a result, and why.
    Failed(String),
}

/// What a campaign hands out, prepared once (by `fed_eval_run.rs`) from its subject.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The task every asked client gets (its deadline fields are set per client).
    pub task: v1::Task,
    /// The parameters, for the downloads of a job round's model (a registry version is served
    /// by the registry's own download).
    pub params: Arc<Vec<f32>>,
}

/// What [`FedEvals::pick`] found for a checking-in client.
#[derive(Debug)]
pub(crate) enum Pick {
    /// Nothing to evaluate.
    Nothing,
    /// This client is asked (already recorded): send it this task.
    Task(Box<v1::Task>),
    /// Campaign `id` has no task yet: prepare it (`set_prepared`) and pick again.
    Prepare(u64, EvalSubject),
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReportError {
    /// No running campaign with that id.
    Unknown,
    /// The client was not asked by that campaign, or already reported.
    NotHeld(&'static str),
}

/// The clients a campaign asks at most: `clients` plus a quarter (at least one) for the clients
/// that drop out, like a training round's over-selection.
pub(crate) fn ask_limit(clients: u32) -> u32 {
    clients.saturating_add((clients / 4).max(1))
}

/// A running campaign.
struct Campaign {
    req: EvalRequest,
    started_at_ms: i64,
    deadline_ms: u64,
    asked: HashSet<u64>,
    reports: BTreeMap<u64, ClientEvalReport>,
    prepared: Option<Arc<Prepared>>,
    /// A check-in is preparing the task: others skip the campaign meanwhile.
    preparing: bool,
    /// `take_for_finish` ran: no more tasks or reports.
    finishing: bool,
}

#[derive(Default)]
struct Book {
    next_id: u64,
    running: BTreeMap<u64, Campaign>,
    finished: BTreeMap<u64, (EvalRequest, EvalStatus)>,
}

/// What a finishing campaign hands to the code that summarizes and stores it.
#[derive(Debug)]
pub(crate) struct Finishing {
    /// The request.
    pub req: EvalRequest,
    /// When it started, Unix ms.
    pub started_at_ms: i64,
    /// The validated reports, by client.
    pub reports: Vec<ClientEvalReport>,
}

/// The running and recently finished campaigns.
#[derive(Default)]
pub(crate) struct FedEvals {
    book: Mutex<Book>,
    changed: tokio::sync::Notify,
}

impl FedEvals {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a campaign; returns its id. Refused (with why, one line) beyond the bounds. The
    /// campaign ends by itself only through `Shared::finish_due_fed_evals` (check-ins, and the
    /// timer `Shared::start_fed_eval` sets): start campaigns through `Shared::start_fed_eval`.
    pub(crate) fn start(&self, req: EvalRequest) -> Result<u64, String> {
        if !(1..=MAX_EVAL_CLIENTS).contains(&req.clients) {
            return Err(format!(
                "clients must be between 1 and {MAX_EVAL_CLIENTS}, got {}",
                req.clients
            ));
        }
        if req.deadline.is_zero() || req.deadline > MAX_DEADLINE {
            return Err(format!(
                "the deadline must be between 1 s and {} s",
                MAX_DEADLINE.as_secs()
            ));
        }
        if let Some(t) = req.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(format!("threshold must be in [0, 1], got {t}"));
        }
        let mut book = self.book();
        if book.running.len() >= MAX_CAMPAIGNS {
            return Err(format!(
                "{MAX_CAMPAIGNS} federated evaluations are running already; retry when one ended"
            ));
        }
        book.next_id += 1;
        let id = book.next_id;
        let now = now_ms();
        book.running.insert(
            id,
            Campaign {
                deadline_ms: now.saturating_add(req.deadline.as_millis() as u64),
                started_at_ms: now as i64,
                req,
                asked: HashSet::new(),
                reports: BTreeMap::new(),
                prepared: None,
                preparing: false,
                finishing: false,
            },
        );
        Ok(id)
    }

    /// Where campaign `id` stands (`None`: unknown, or forgotten beyond [`MAX_FINISHED`]).
    pub(crate) fn status(&self, id: u64) -> Option<EvalStatus> {
        self.get(id).map(|(_, s)| s)
    }

    /// Campaign `id`'s request and where it stands (`None`: unknown or forgotten).
    pub(crate) fn get(&self, id: u64) -> Option<(EvalRequest, EvalStatus)> {
        let book = self.book();
        if let Some(c) = book.running.get(&id) {
            let status = EvalStatus::Running {
                asked: c.asked.len() as u32,
                reported: c.reports.len() as u32,
            };
            return Some((c.req.clone(), status));
        }
        book.finished.get(&id).cloned()
    }

    /// Waits until campaign `id` ends; `None` if unknown.
    pub(crate) async fn wait(&self, id: u64) -> Option<EvalStatus> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status(id) {
                Some(EvalStatus::Running { .. }) => notified.await,
                other => return other,
            }
        }
    }

    /// The task for `client` of `tenant` checking in: the first running campaign of its tenant
    /// that has not asked it and still asks (recorded as asked), or one to prepare first.
    pub(crate) fn pick(&self, tenant: &str, client: u64) -> Pick {
        let now = now_ms();
        let mut book = self.book();
        for (&id, c) in book.running.iter_mut() {
            if c.req.tenant != tenant
                || c.finishing
                || now >= c.deadline_ms
                || c.asked.len() as u32 >= ask_limit(c.req.clients)
                || c.reports.len() as u32 >= c.req.clients
                || c.asked.contains(&client)
            {
                continue;
            }
            let Some(p) = c.prepared.clone() else {
                if c.preparing {
                    continue;
                }
                c.preparing = true;
                return Pick::Prepare(id, c.req.subject.clone());
            };
            c.asked.insert(client);
            let mut task = p.task.clone();
            task.deadline_unix_ms = c.deadline_ms;
            task.time_remaining_ms = c.deadline_ms.saturating_sub(now).max(1);
            return Pick::Task(Box::new(task));
        }
        Pick::Nothing
    }

    /// The prepared task of campaign `id`, or why it cannot be (the campaign then fails).
    pub(crate) fn set_prepared(&self, id: u64, prepared: Result<Prepared, String>) {
        let mut book = self.book();
        let Some(c) = book.running.get_mut(&id) else {
            return;
        };
        c.preparing = false;
        match prepared {
            Ok(p) => c.prepared = Some(Arc::new(p)),
            Err(why) => {
                if let Some(c) = book.running.remove(&id) {
                    Self::remember(&mut book, id, c.req, EvalStatus::Failed(why));
                }
                drop(book);
                self.changed.notify_waiters();
            }
        }
    }

    /// The parameters of a job round's model for `client`'s download, when it holds an
    /// evaluation task of a running campaign on exactly that model.
    pub(crate) fn round_params(
        &self,
        client: u64,
        job_id: &str,
        version: u64,
    ) -> Option<Arc<Vec<f32>>> {
        let book = self.book();
        book.running.values().find_map(|c| {
            let p = c.prepared.as_ref()?;
            let round = matches!(c.req.subject, EvalSubject::Round { .. });
            (round
                && c.asked.contains(&client)
                && p.task.job_id == job_id
                && p.task.model_version == version)
                .then(|| p.params.clone())
        })
    }

    /// Records `client`'s validated report for campaign `id`; `Ok(true)` when the campaign has
    /// heard from all the clients it wanted (finish it).
    pub(crate) fn report(
        &self,
        id: u64,
        client: u64,
        report: ClientEvalReport,
    ) -> Result<bool, ReportError> {
        let mut book = self.book();
        let c = match book.running.get_mut(&id) {
            Some(c) if !c.finishing => c,
            _ => return Err(ReportError::Unknown),
        };
        if !c.asked.contains(&client) {
            return Err(ReportError::NotHeld(
                "this client was not given that evaluation task",
            ));
        }
        if c.reports.contains_key(&client) {
            return Err(ReportError::NotHeld(
                "this client already reported for that evaluation",
            ));
        }
        c.reports.insert(client, report);
        Ok(c.reports.len() as u32 >= c.req.clients)
    }

    /// Campaigns whose deadline passed and that are not finishing yet.
    pub(crate) fn due(&self) -> Vec<u64> {
        let now = now_ms();
        self.book()
            .running
            .iter()
            .filter(|(_, c)| !c.finishing && now >= c.deadline_ms)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Marks campaign `id` finishing and hands out what it collected (`None`: unknown or already
    /// finishing). A campaign without reports ends here as failed.
    pub(crate) fn take_for_finish(&self, id: u64) -> Option<Finishing> {
        let mut book = self.book();
        let c = book.running.get_mut(&id).filter(|c| !c.finishing)?;
        c.finishing = true;
        if c.reports.is_empty() {
            let why = format!(
                "no client reported within {} s ({} asked)",
                c.req.deadline.as_secs(),
                c.asked.len()
            );
            if let Some(c) = book.running.remove(&id) {
                Self::remember(&mut book, id, c.req, EvalStatus::Failed(why));
            }
            drop(book);
            self.changed.notify_waiters();
            return None;
        }
        Some(Finishing {
            req: c.req.clone(),
            started_at_ms: c.started_at_ms,
            reports: c.reports.values().cloned().collect(),
        })
    }

    /// Ends campaign `id` with `status`.
    pub(crate) fn finish(&self, id: u64, status: EvalStatus) {
        let mut book = self.book();
        if let Some(c) = book.running.remove(&id) {
            Self::remember(&mut book, id, c.req, status);
        }
        drop(book);
        self.changed.notify_waiters();
    }

    fn remember(book: &mut Book, id: u64, req: EvalRequest, status: EvalStatus) {
        book.finished.insert(id, (req, status));
        while book.finished.len() > MAX_FINISHED {
            book.finished.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::JobId;

    fn req(clients: u32) -> EvalRequest {
        EvalRequest {
            tenant: "t".into(),
            subject: EvalSubject::Round {
                job_id: JobId(7),
                round: 2,
            },
            kind: EvalKind::OnDemand,
            clients,
            deadline: Duration::from_secs(60),
            threshold: None,
        }
    }

    fn prepared() -> Prepared {
        Prepared {
            task: v1::Task {
                job_id: "7".into(),
                model_version: 2,
                ..Default::default()
            },
            params: Arc::new(vec![1.0]),
        }
    }

    fn rep(acc: f64) -> ClientEvalReport {
        ClientEvalReport {
            loss: 0.5,
            accuracy: Some(acc),
            samples: 10,
            cohorts: BTreeMap::new(),
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let f = FedEvals::default();
        assert!(f.start(req(0)).is_err());
        assert!(f.start(req(MAX_EVAL_CLIENTS + 1)).is_err());
        let mut r = req(1);
        r.deadline = Duration::from_secs(3601);
        assert!(f.start(r).is_err());
        for _ in 0..MAX_CAMPAIGNS {
            f.start(req(1)).unwrap();
        }
        let e = f.start(req(1)).unwrap_err();
        assert!(e.contains("running already"), "{e}");
    }

    #[test]
    fn clients_are_asked_once_within_the_over_selection_and_report_once() {
        let f = FedEvals::default();
        let id = f.start(req(2)).unwrap();
        assert!(matches!(f.pick("other", 1), Pick::Nothing));
        let Pick::Prepare(pid, _) = f.pick("t", 1) else {
            panic!("prepare first")
        };
        assert_eq!(pid, id);
        // Someone else is preparing: nothing meanwhile.
        assert!(matches!(f.pick("t", 2), Pick::Nothing));
        f.set_prepared(id, Ok(prepared()));
        assert!(matches!(f.pick("t", 1), Pick::Task(_)));
        assert!(matches!(f.pick("t", 1), Pick::Nothing), "asked once");
        assert!(matches!(f.pick("t", 2), Pick::Task(_)));
        assert!(matches!(f.pick("t", 3), Pick::Task(_)), "over-selection");
        assert_eq!(ask_limit(2), 3);
        assert!(matches!(f.pick("t", 4), Pick::Nothing), "limit reached");
        assert_eq!(f.round_params(1, "7", 2).as_deref(), Some(&vec![1.0]));
        assert_eq!(f.round_params(9, "7", 2), None);
        assert_eq!(
            f.report(id, 9, rep(0.5)),
            Err(ReportError::NotHeld(
                "this client was not given that evaluation task"
            ))
        );
        assert_eq!(f.report(id, 1, rep(0.5)), Ok(false));
        assert!(matches!(
            f.report(id, 1, rep(0.5)),
            Err(ReportError::NotHeld(_))
        ));
        assert_eq!(f.report(id, 2, rep(0.7)), Ok(true));
        let fin = f.take_for_finish(id).unwrap();
        assert_eq!(fin.reports.len(), 2);
        assert!(f.take_for_finish(id).is_none(), "finished once");
        assert_eq!(f.report(id, 3, rep(0.5)), Err(ReportError::Unknown));
        f.finish(
            id,
            EvalStatus::Done {
                summary: flotilla_registry::summarize(&fin.reports, None),
                stored_id: Some(1),
            },
        );
        assert!(matches!(f.status(id), Some(EvalStatus::Done { .. })));
    }

    #[tokio::test]
    async fn a_campaign_without_reports_fails_and_wakes_its_waiters() {
        let f = Arc::new(FedEvals::default());
        let id = f.start(req(1)).unwrap();
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait(id).await }
        });
        tokio::task::yield_now().await;
        assert!(f.take_for_finish(id).is_none());
        let s = waiter.await.unwrap().unwrap();
        assert!(
            matches!(&s, EvalStatus::Failed(w) if w.starts_with("no client reported within 60 s")),
            "{s:?}"
        );
        assert_eq!(f.wait(12345).await, None);
    }

    #[test]
    fn a_failed_preparation_fails_the_campaign() {
        let f = FedEvals::default();
        let id = f.start(req(1)).unwrap();
        assert!(matches!(f.pick("t", 1), Pick::Prepare(..)));
        f.set_prepared(id, Err("model gone".into()));
        assert_eq!(f.status(id), Some(EvalStatus::Failed("model gone".into())));
        assert!(matches!(f.pick("t", 1), Pick::Nothing));
    }
}
