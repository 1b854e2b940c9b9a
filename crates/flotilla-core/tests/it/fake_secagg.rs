//! The core test kit for secure-aggregation rounds: a fake [`SecureAggregator`] that records every
//! call and does what the test tells it (refuse a message, fail a stage close or the unmasking,
//! return a given sum), and helpers that drive a [`RoundMachine`] through a secure round by hand.
//!
//! The machine owns its aggregator as a `Box<dyn SecureAggregator>`, so the fake's state sits behind
//! an `Arc<Mutex<..>>` that the test keeps a handle on ([`FakeSecAgg::state`]) to inspect and steer
//! it after the machine took the box.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_core::round::*;
use flotilla_core::{ParamLayout, TensorSpec};

pub const ADV: u32 = 0;
pub const SHARE: u32 = 1;
pub const MASKED: u32 = 2;
pub const UNMASK: u32 = 3;

/// What a client sent, as the fake received it (an owned copy of a [`StageInput`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Message(Vec<u8>),
    Masked(Vec<u32>),
}

/// One call the machine made on the fake.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Start {
        round: u64,
        attempt: u32,
        seed: u64,
    },
    Receive {
        client: ClientId,
        stage: u32,
        input: Input,
        /// Whether the fake accepted it (false: it answered with a refusal).
        accepted: bool,
    },
    CloseStage {
        stage: u32,
        survivors: Vec<ClientId>,
    },
    Finish {
        contributors: Vec<ClientId>,
    },
}

/// The fake's recorded calls and its instructions.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// `(client, stage)` messages to refuse (with [`FakeState::refusal`]).
    pub refuse: BTreeSet<(ClientId, u32)>,
    /// Fail `close_stage` at this stage, with this reason.
    pub fail_close: Option<(u32, String)>,
    /// Fail `finish` with this reason.
    pub fail_finish: Option<String>,
    /// `finish` returns exactly this, whoever contributed.
    pub sum: Option<Vec<f64>>,
    /// Otherwise `finish` returns the sum of the contributors' registered vectors (a contributor
    /// without one adds zeros).
    pub vectors: BTreeMap<ClientId, Vec<f64>>,
    /// The model's length, for the zeros.
    pub dim: usize,
}

impl FakeState {
    /// The refusal the fake answers with.
    pub fn refusal() -> StageRefusal {
        StageRefusal::new(
            "fake_refused",
            RefusalKind::Precondition,
            "the fake says no",
        )
    }

    /// The `receive` calls so far.
    pub fn receives(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c, Call::Receive { .. }))
            .count()
    }

    /// The contributors of every `finish` call so far.
    pub fn finishes(&self) -> Vec<Vec<ClientId>> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Finish { contributors } => Some(contributors.clone()),
                _ => None,
            })
            .collect()
    }

    /// The survivors of every `close_stage` call so far, with the stage.
    pub fn closes(&self) -> Vec<(u32, Vec<ClientId>)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::CloseStage { stage, survivors } => Some((*stage, survivors.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `(round, attempt)` of every `start` call so far.
    pub fn starts(&self) -> Vec<(u64, u32)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Start { round, attempt, .. } => Some((*round, *attempt)),
                _ => None,
            })
            .collect()
    }
}

/// A fake secure aggregator; clones share one [`FakeState`].
#[derive(Clone)]
pub struct FakeSecAgg(Arc<Mutex<FakeState>>);

// The machine's `Debug` includes its aggregator's, and tests compare that `Debug` before and after
// a refused event: the fake's record of the refused call must not count as a change of the machine.
impl fmt::Debug for FakeSecAgg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FakeSecAgg")
    }
}

impl FakeSecAgg {
    /// A fake for a model of `dim` values.
    pub fn new(dim: usize) -> Self {
        Self(Arc::new(Mutex::new(FakeState {
            dim,
            ..FakeState::default()
        })))
    }

    /// A box sharing this fake's state, for [`RoundMachine::set_secure_aggregator`].
    pub fn boxed(&self) -> Box<dyn SecureAggregator> {
        Box::new(self.clone())
    }

    /// The shared state, to inspect or steer.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    /// The payload `close_stage` returns for `client` when `stage` closes.
    pub fn payload(stage: u32, client: ClientId) -> Vec<u8> {
        format!("{stage}:{client}").into_bytes()
    }
}

impl SecureAggregator for FakeSecAgg {
    fn start(&mut self, round: u64, attempt: u32, seed: u64) {
        self.state().calls.push(Call::Start {
            round,
            attempt,
            seed,
        });
    }

    fn receive(
        &mut self,
        client: ClientId,
        stage: u32,
        input: StageInput<'_>,
    ) -> Result<(), StageRefusal> {
        let mut s = self.state();
        let accepted = !s.refuse.contains(&(client, stage));
        let input = match input {
            StageInput::Message(b) => Input::Message(b.to_vec()),
            StageInput::Masked(v) => Input::Masked(v),
        };
        s.calls.push(Call::Receive {
            client,
            stage,
            input,
            accepted,
        });
        if accepted {
            Ok(())
        } else {
            Err(FakeState::refusal())
        }
    }

    fn close_stage(
        &mut self,
        stage: u32,
        survivors: &[ClientId],
    ) -> Result<BTreeMap<ClientId, Vec<u8>>, String> {
        let mut s = self.state();
        s.calls.push(Call::CloseStage {
            stage,
            survivors: survivors.to_vec(),
        });
        match &s.fail_close {
            Some((at, reason)) if *at == stage => Err(reason.clone()),
            _ => Ok(survivors
                .iter()
                .map(|&c| (c, Self::payload(stage, c)))
                .collect()),
        }
    }

    fn finish(&mut self, contributors: &[ClientId]) -> Result<Vec<f64>, String> {
        let mut s = self.state();
        s.calls.push(Call::Finish {
            contributors: contributors.to_vec(),
        });
        if let Some(reason) = &s.fail_finish {
            return Err(reason.clone());
        }
        if let Some(sum) = &s.sum {
            return Ok(sum.clone());
        }
        let mut sum = vec![0.0; s.dim];
        for c in contributors {
            for (t, v) in sum.iter_mut().zip(s.vectors.get(c).into_iter().flatten()) {
                *t += v;
            }
        }
        Ok(sum)
    }
}

// ---- driving a secure round by hand ----

pub fn layout(n: usize) -> ParamLayout {
    ParamLayout::new(vec![TensorSpec::new("w", [n])])
}

/// A secure-aggregation policy: `rounds` rounds of `cpr` clients, 3 of 5 (0.6) needed, 3 attempts.
pub fn policy(rounds: u64, cpr: usize) -> RoundPolicy {
    let mut p = RoundPolicy::new(rounds, cpr);
    p.selection_window_ms = 10;
    p.stage_deadline_ms = 1000;
    p.min_report_fraction = 0.6;
    p.max_attempts = 3;
    p.stages = StageKind::SECURE_AGGREGATION.to_vec();
    p
}

/// A machine of model `[1, -1]` with a fresh fake installed; returns both.
pub fn machine(p: RoundPolicy, seed: u64) -> (RoundMachine, FakeSecAgg) {
    let fake = FakeSecAgg::new(2);
    let m = RoundMachine::new(p, layout(2), vec![1.0, -1.0], seed)
        .unwrap()
        .with_secure_aggregator(fake.boxed());
    (m, fake)
}

pub fn configured(actions: &[Action]) -> Vec<(ClientId, Task)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Configure { client, task } => Some((*client, task.clone())),
            _ => None,
        })
        .collect()
}

pub fn timers(actions: &[Action]) -> Vec<(Timer, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTimer { timer, at_ms } => Some((*timer, *at_ms)),
            _ => None,
        })
        .collect()
}

/// The input an honest client sends for `t`'s stage: its masked vector at the masked-input stage
/// (from [`masked_of`]), an encoded message (from [`message_of`]) otherwise.
pub fn honest_input(c: ClientId, t: &Task) -> Input {
    if t.kind == StageKind::MaskedInput {
        Input::Masked(masked_of(c))
    } else {
        Input::Message(message_of(c, t.stage))
    }
}

pub fn masked_of(c: ClientId) -> Vec<u32> {
    vec![c.0 as u32, u32::MAX - c.0 as u32]
}

pub fn message_of(c: ClientId, stage: u32) -> Vec<u8> {
    format!("msg {stage} from {c}").into_bytes()
}

/// Feeds `c`'s stage message `input` for `t`'s round, attempt and stage, with `n` samples.
pub fn send(
    m: &mut RoundMachine,
    now: u64,
    c: ClientId,
    t: &Task,
    input: &Input,
    n: u64,
) -> Vec<Action> {
    let input = match input {
        Input::Message(b) => StageInput::Message(b),
        Input::Masked(v) => StageInput::Masked(v.clone()),
    };
    m.handle(
        now,
        Event::StageMessage {
            client: c,
            round: t.round,
            attempt: t.attempt,
            stage: t.stage,
            input,
            num_samples: n,
            metrics: ReportMetrics {
                train_loss: 2.0,
                eval: None,
            },
        },
    )
}

/// `c`'s honest stage message for `t`, with `n` samples.
pub fn stage_message(m: &mut RoundMachine, now: u64, c: ClientId, t: &Task, n: u64) -> Vec<Action> {
    send(m, now, c, t, &honest_input(c, t), n)
}

/// Checks in `clients` and opens the current round's stage 0; returns its cohort.
pub fn open(
    m: &mut RoundMachine,
    now: u64,
    clients: impl IntoIterator<Item = u64>,
) -> Vec<(ClientId, Task)> {
    configured(&check_in_and_select(m, now, clients))
}

/// Checks in `clients` and fires the selection timer; returns the actions of the selection.
pub fn check_in_and_select(
    m: &mut RoundMachine,
    now: u64,
    clients: impl IntoIterator<Item = u64>,
) -> Vec<Action> {
    let mut acts = Vec::new();
    for c in clients {
        acts.extend(m.handle(
            now,
            Event::CheckIn {
                client: ClientId(c),
            },
        ));
    }
    let t = timers(&acts);
    assert_eq!(t.len(), 1, "one selection timer: {acts:?}");
    m.handle(t[0].1, Event::TimerFired(t[0].0))
}

/// Every member of `cohort` sends its honest message (client c with 10 + c samples); returns the
/// actions of the last one.
pub fn all_report(m: &mut RoundMachine, now: u64, cohort: &[(ClientId, Task)]) -> Vec<Action> {
    let mut last = Vec::new();
    for (c, t) in cohort {
        last = stage_message(m, now, *c, t, 10 + c.0);
        assert!(matches!(last[0], Action::Accepted { .. }), "{last:?}");
    }
    last
}

/// The members of `cohort` but those in `skip` send their honest message.
pub fn all_report_but(m: &mut RoundMachine, cohort: &[(ClientId, Task)], skip: &[u64]) {
    for (c, t) in cohort.iter().filter(|(c, _)| !skip.contains(&c.0)) {
        let acts = stage_message(m, 20, *c, t, 5);
        assert!(matches!(acts[0], Action::Accepted { .. }), "{acts:?}");
    }
}

/// Checks in clients `0..n`, runs the current round through its first three stages and has
/// everyone unmask; returns the actions of the last unmasking message.
pub fn run_round(m: &mut RoundMachine, now: u64, n: u64) -> Vec<Action> {
    let mut cur = open(m, now, 0..n);
    for _ in 0..3 {
        cur = configured(&all_report(m, now + 10, &cur));
    }
    assert!(cur.iter().all(|(_, t)| t.stage == UNMASK), "{cur:?}");
    all_report(m, now + 20, &cur)
}

pub fn abandoned(acts: &[Action]) -> Option<(u64, u32, String, AbandonCause)> {
    acts.iter().find_map(|a| match a {
        Action::RoundAbandoned {
            round,
            attempt,
            reason,
            cause,
            ..
        } => Some((*round, *attempt, reason.clone(), *cause)),
        _ => None,
    })
}

pub fn commit(acts: &[Action]) -> Option<CommitInfo> {
    acts.iter().find_map(|a| match a {
        Action::Commit(c) => Some(c.clone()),
        _ => None,
    })
}

pub fn ids(c: &[(ClientId, Task)]) -> Vec<u64> {
    c.iter().map(|(c, _)| c.0).collect()
}

pub fn clients(ids: impl IntoIterator<Item = u64>) -> Vec<ClientId> {
    ids.into_iter().map(ClientId).collect()
}

/// The machine's persisted state and its `Debug` (which includes the stage payloads), to show that
/// an event changed nothing.
pub fn fingerprint(m: &RoundMachine) -> (String, String) {
    (serde_json::to_string(m).unwrap(), format!("{m:?}"))
}
