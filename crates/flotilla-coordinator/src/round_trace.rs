//! The `round_attempt` span of a job: one per attempt of a round, from the moment the job's machine
//! is at that attempt until it commits (`outcome = "committed"`), is abandoned (`"abandoned"`) or
//! the job ends (`"job_ended"`), with a `stage` child span per stage of the attempt (a plain
//! training round has one, `train`; a secure-aggregation round four, `advertise_keys` …
//! `unmasking`).
//!
//! The spans are roots (their own traces), not children of the call that happened to start them:
//! an attempt outlives every call. Nothing here runs per call beyond comparing two numbers; spans
//! are made only when the attempt or stage changes.

use flotilla_core::round::RoundMachine;
use tracing::Span;
use tracing::field::Empty;

/// The current attempt's span and its current stage's span.
struct Current {
    round: u64,
    attempt: u32,
    span: Span,
    stage: Option<(u32, Span)>,
}

/// The spans of a job's current round attempt (kept in the job's state; see the module documentation).
#[derive(Default)]
pub(crate) struct RoundTrace {
    current: Option<Current>,
}

impl RoundTrace {
    /// Brings the spans up to date with `machine` after it handled an event: closes the spans of an
    /// attempt or stage that is over, opens those of one that began. `ended`: the job has ended.
    pub(crate) fn observe(&mut self, job: u64, machine: &RoundMachine, ended: bool) {
        let (round, attempt) = machine.current_round();
        let over = ended || machine.is_finished() || machine.failure().is_some();
        if let Some(c) = &self.current
            && (over || (c.round, c.attempt) != (round, attempt))
        {
            let outcome = if round > c.round || machine.rounds_committed() >= c.round {
                "committed"
            } else if over {
                "job_ended"
            } else {
                "abandoned"
            };
            c.span.record("outcome", outcome);
            self.current = None;
        }
        if over {
            return;
        }
        let c = self.current.get_or_insert_with(|| Current {
            round,
            attempt,
            span: tracing::info_span!(
                parent: None,
                "round_attempt",
                job,
                round,
                attempt,
                outcome = Empty,
            ),
            stage: None,
        });
        let stage = machine.current_stage();
        if c.stage.as_ref().map(|(i, _)| *i) != stage.map(|(i, _)| i) {
            c.stage = stage.map(|(index, kind)| {
                let span = tracing::info_span!(
                    parent: &c.span,
                    "stage",
                    job,
                    round,
                    attempt,
                    stage = index,
                    kind = kind.name(),
                );
                (index, span)
            });
        }
    }
}
