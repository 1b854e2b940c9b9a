//! The admission pre-check of an upload: may this client send a report for this round, attempt
//! and stage *now*? A driver asks before it reads any payload byte or gives the stream any
//! resource (an upload slot, a buffer), so a client that is not in the cohort cannot hold what
//! the cohort needs.

use super::{Phase, RejectReason, RoundMachine};
use crate::round::ClientId;

impl RoundMachine {
    /// Whether a report from `client` for `round`, `attempt` and `stage` could be accepted now,
    /// judged from an upload's header alone (changes nothing).
    ///
    /// Round-based jobs: the round and attempt are the current ones ([`RejectReason::WrongRound`]),
    /// a stage is running ([`RejectReason::NotAccepting`]) and it is `stage`
    /// ([`RejectReason::WrongStage`]), it takes uploads — a training stage
    /// ([`RejectReason::WrongStageKind`]) — the client is in its cohort
    /// ([`RejectReason::NotSelected`]), has not reported yet ([`RejectReason::Duplicate`]) and the
    /// stage is not full ([`RejectReason::RoundFull`]). These are the checks the machine makes on
    /// the report itself, so a refusal here names the reason the report would get.
    /// FedBuff: [`RoundMachine::precheck_report`] (the client's outstanding, not too stale task),
    /// then stage 0.
    pub fn precheck_upload(
        &self,
        client: ClientId,
        round: u64,
        attempt: u32,
        stage: u32,
    ) -> Result<(), RejectReason> {
        if self.fedbuff_spec().is_some() {
            self.precheck_report(client, round, attempt)?;
            if stage != 0 {
                return Err(RejectReason::WrongStage {
                    expected: 0,
                    got: stage,
                });
            }
            return Ok(());
        }
        // Round and attempt first, as `precheck_report` always did: a late report of an attempt
        // that is over is named `WrongRound` whatever the machine does now.
        if (round, attempt) != (self.round, self.attempt) {
            return Err(RejectReason::WrongRound {
                round: self.round,
                attempt: self.attempt,
                got_round: round,
                got_attempt: attempt,
            });
        }
        let Phase::Running(s) = &self.phase else {
            return Err(RejectReason::NotAccepting(self.phase.name()));
        };
        if stage != s.index {
            return Err(RejectReason::WrongStage {
                expected: s.index,
                got: stage,
            });
        }
        let kind = self.policy.stages[s.index as usize];
        if !kind.trains() {
            return Err(RejectReason::WrongStageKind {
                stage,
                kind: kind.name(),
            });
        }
        if !s.cohort.contains(&client) {
            return Err(RejectReason::NotSelected);
        }
        if s.reported.contains(&client) {
            return Err(RejectReason::Duplicate);
        }
        if s.reported.len() >= self.policy.clients_per_round {
            return Err(RejectReason::RoundFull);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::params::{ParamLayout, TensorSpec};
    use crate::round::{
        Action, ClientId, Event, RejectReason, ReportMetrics, RoundMachine, RoundPolicy, Task,
        Timer,
    };

    fn machine(cpr: usize, checked_in: u64) -> (RoundMachine, Vec<(ClientId, Task)>) {
        let mut p = RoundPolicy::new(3, cpr);
        p.selection_window_ms = 10;
        p.stage_deadline_ms = 1000;
        let layout = ParamLayout::new(vec![TensorSpec::new("w", [2])]);
        let mut m = RoundMachine::new(p, layout, vec![0.0, 0.0], 11).unwrap();
        let mut acts = Vec::new();
        for c in 0..checked_in {
            acts.extend(m.handle(
                0,
                Event::CheckIn {
                    client: ClientId(c),
                },
            ));
        }
        let (timer, at) = acts
            .iter()
            .find_map(|a| match a {
                Action::SetTimer {
                    timer: t @ Timer::Selection { .. },
                    at_ms,
                } => Some((*t, *at_ms)),
                _ => None,
            })
            .expect("selection timer");
        let cohort = m
            .handle(at, Event::TimerFired(timer))
            .into_iter()
            .filter_map(|a| match a {
                Action::Configure { client, task } => Some((client, task)),
                _ => None,
            })
            .collect();
        (m, cohort)
    }

    fn report(m: &mut RoundMachine, c: ClientId, t: &Task) -> Vec<Action> {
        let e = Event::Report {
            client: c,
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            num_samples: 5,
            update: &[1.0, 2.0],
            metrics: ReportMetrics {
                train_loss: 0.5,
                eval: None,
            },
        };
        m.handle(20, e)
    }

    /// What the machine itself answers to a report of `client` for `t`'s round, attempt and stage
    /// (on a copy, so nothing changes).
    fn machine_verdict(m: &RoundMachine, client: ClientId, t: &Task) -> Result<(), RejectReason> {
        let mut copy = m.clone();
        let acts = report(&mut copy, client, t);
        match acts.first() {
            Some(Action::Accepted { .. }) => Ok(()),
            Some(Action::Reject { reason, .. }) => Err(reason.clone()),
            other => panic!("unexpected first action {other:?}"),
        }
    }

    #[test]
    fn only_the_cohort_passes_and_the_machine_agrees() {
        let (mut m, cohort) = machine(2, 5);
        assert_eq!(cohort.len(), 2);
        let t = cohort[0].1.clone();
        let members: Vec<ClientId> = cohort.iter().map(|(c, _)| *c).collect();
        for c in (0..5).map(ClientId) {
            let pre = m.precheck_upload(c, t.round, t.attempt, t.stage);
            if members.contains(&c) {
                assert_eq!(pre, Ok(()), "{c} is in the cohort");
            } else {
                assert_eq!(
                    pre,
                    Err(RejectReason::NotSelected),
                    "{c} is not in the cohort"
                );
            }
            // The pre-check never refuses what the machine would accept, and names its reason.
            if let Err(r) = &pre {
                assert_eq!(machine_verdict(&m, c, &t).as_ref(), Err(r));
            }
        }
        // Nothing changed: the cohort still reports, and a second upload is a duplicate.
        let (c0, t0) = &cohort[0];
        assert!(matches!(
            report(&mut m, *c0, t0).first(),
            Some(Action::Accepted { .. })
        ));
        assert_eq!(
            m.precheck_upload(*c0, t0.round, t0.attempt, t0.stage),
            Err(RejectReason::Duplicate)
        );
        assert_eq!(machine_verdict(&m, *c0, t0), Err(RejectReason::Duplicate));
    }

    #[test]
    fn wrong_round_attempt_stage_and_idle_phase_are_refused() {
        let (m, cohort) = machine(1, 1);
        let (c, t) = &cohort[0];
        assert!(matches!(
            m.precheck_upload(*c, t.round + 1, t.attempt, 0),
            Err(RejectReason::WrongRound { .. })
        ));
        assert!(matches!(
            m.precheck_upload(*c, t.round, t.attempt + 1, 0),
            Err(RejectReason::WrongRound { .. })
        ));
        assert_eq!(
            m.precheck_upload(*c, t.round, t.attempt, 1),
            Err(RejectReason::WrongStage {
                expected: 0,
                got: 1
            })
        );
        // Round 1 committed by the only report: round 2 waits for check-ins, takes no uploads.
        let mut m2 = m.clone();
        let acts = report(&mut m2, *c, t);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Commit(_))),
            "{acts:?}"
        );
        assert!(matches!(
            m2.precheck_upload(*c, 2, 1, 0),
            Err(RejectReason::NotAccepting(_))
        ));
        assert!(matches!(
            m2.precheck_upload(*c, 1, 1, 0),
            Err(RejectReason::WrongRound { .. })
        ));
    }
}
