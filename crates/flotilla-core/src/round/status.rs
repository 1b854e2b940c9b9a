//! What a [`RoundMachine`] is doing and waiting for, for drivers that explain it to people, and the
//! client-reported task failures ([`Event::TaskFailed`](super::Event::TaskFailed)).

use super::{ClientId, Phase, RejectReason, RoundMachine, StageKind};

/// Why a round attempt was abandoned ([`Action::RoundAbandoned`](crate::round::Action::RoundAbandoned)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbandonCause {
    /// Fewer reports than needed when the stage closed: at its deadline, or earlier because every
    /// other selected client dropped out or reported a failure.
    TooFewReports,
    /// The strategy left every report out of the aggregate.
    AllQuarantined,
    /// Secure aggregation could not produce a usable sum.
    AggregationFailed,
}

/// What the machine is doing now ([`RoundMachine::activity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activity {
    /// No round can start: fewer than `min_clients` clients are available
    /// ([`RoundMachine::available_clients`]).
    WaitingForClients,
    /// Enough clients are available; the selection window is open.
    Selecting,
    /// A stage is collecting reports (FedBuff: always, while the job runs).
    Stage {
        /// Index of the stage within the round.
        index: u32,
        /// Its kind.
        kind: StageKind,
    },
    /// Every round committed.
    Finished,
    /// The job failed ([`RoundMachine::failure`]).
    Failed,
}

impl RoundMachine {
    /// What the machine is doing now.
    pub fn activity(&self) -> Activity {
        match &self.phase {
            Phase::Finished => Activity::Finished,
            Phase::Failed(_) => Activity::Failed,
            _ if self.fedbuff_spec().is_some() => Activity::Stage {
                index: 0,
                kind: StageKind::Train,
            },
            Phase::Waiting => Activity::WaitingForClients,
            Phase::SelectionPending => Activity::Selecting,
            Phase::Running(s) => Activity::Stage {
                index: s.index,
                kind: self.policy.stages[s.index as usize],
            },
        }
    }

    /// Clients available for the next selection at `now_ms`: those that checked in within the
    /// policy's `checkin_ttl_ms` and are not in the current cohort. A round starts once this reaches
    /// `min_clients`. FedBuff jobs keep no pool: the clients holding a task.
    pub fn available_clients(&self, now_ms: u64) -> usize {
        if self.fedbuff_spec().is_some() {
            return self.fedbuff.in_flight.len();
        }
        let ttl = self.policy.checkin_ttl_ms;
        self.pool
            .values()
            .filter(|seen| now_ms.saturating_sub(**seen) <= ttl)
            .count()
    }

    /// Whether `client` holds the task `(round, attempt, stage)` now, so that
    /// [`Event::TaskFailed`](super::Event::TaskFailed) for it would be accepted; changes nothing. A
    /// driver checks this before it records the client's reason, then feeds the event.
    pub fn check_task_failure(
        &self,
        client: ClientId,
        round: u64,
        attempt: u32,
        stage: u32,
    ) -> Result<(), RejectReason> {
        if matches!(self.phase, Phase::Finished | Phase::Failed(_)) {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        }
        if self.fedbuff_spec().is_some() {
            return match self.fedbuff.in_flight.get(&client) {
                Some(t) if (t.task.round, t.task.attempt, 0) == (round, attempt, stage) => Ok(()),
                Some(t) => Err(RejectReason::WrongRound {
                    round: t.task.round,
                    attempt: t.task.attempt,
                    got_round: round,
                    got_attempt: attempt,
                }),
                None => Err(RejectReason::NoTask),
            };
        }
        let Phase::Running(s) = &self.phase else {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        };
        if (round, attempt) != (self.round, self.attempt) {
            return Err(RejectReason::WrongRound {
                round: self.round,
                attempt: self.attempt,
                got_round: round,
                got_attempt: attempt,
            });
        }
        if stage != s.index {
            return Err(RejectReason::WrongStage {
                expected: s.index,
                got: stage,
            });
        }
        if !s.cohort.contains(&client) {
            return Err(RejectReason::NotSelected);
        }
        if s.reported.contains(&client) || s.failed.contains(&client) {
            return Err(RejectReason::Duplicate);
        }
        Ok(())
    }
}
