//! The pluggable secure aggregator of a secure-aggregation round ([`SecureAggregator`]).
//!
//! The round machine owns its aggregator, as `quinn-proto` owns its crypto session behind a trait:
//! drivers move bytes and time only. They pass a client's stage message through unread
//! ([`Event::StageMessage`](super::Event::StageMessage)) and serve each client the payload the
//! machine holds for it ([`RoundMachine::stage_payload`]); they never see a stage close or the
//! unmasking. This crate stays free of cryptography: `flotilla-secagg` implements the trait for
//! SecAgg+.
//!
//! The aggregator's state lives only in memory (it is not part of a snapshot):
//! [`RoundMachine::recover`] abandons the attempt in flight, and the driver installs a fresh
//! aggregator ([`RoundMachine::set_secure_aggregator`]) before it feeds events again.

use std::collections::BTreeMap;
use std::fmt;

use super::{ClientId, RoundMachine};

/// What a client sent for a secure-aggregation stage, unread by the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum StageInput<'a> {
    /// An encoded stage message (advertised keys, key shares, unmasking shares).
    Message(&'a [u8]),
    /// The masked input: the client's masked vector, words in Z_2^32 (taken by value: the
    /// aggregator adds it into its running sum and drops it).
    Masked(Vec<u32>),
}

/// Which kind of fault a [`StageRefusal`] is, for drivers that map it to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The message is malformed, too large, or the wrong kind for its stage.
    Malformed,
    /// The message does not fit the aggregator's state (another round or stage, not in the cohort).
    Precondition,
    /// The message claims another sender than the authenticated client.
    SenderMismatch,
    /// The client already sent this stage's message.
    Duplicate,
}

/// Why the secure aggregator refused a client's stage message; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secure aggregation refused the message: {message}")]
pub struct StageRefusal {
    /// A short stable name, for counters and logs (e.g. `secagg_duplicate`).
    pub code: &'static str,
    /// The kind of fault.
    pub kind: RefusalKind,
    /// What was wrong, for people.
    pub message: String,
}

impl StageRefusal {
    /// A refusal with `code`, `kind` and `message`.
    pub fn new(code: &'static str, kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            code,
            kind,
            message: message.into(),
        }
    }
}

/// The cryptographic side of a secure-aggregation round, owned by the [`RoundMachine`].
///
/// The machine calls it in this order for each round attempt: [`start`](Self::start) when the
/// attempt's first stage opens; [`receive`](Self::receive) for each client message the machine's
/// own checks passed (round, attempt, stage, cohort, duplicate, full stage, sample count);
/// [`close_stage`](Self::close_stage) when a stage other than the last closes with enough
/// reports; [`finish`](Self::finish) when the last one closes. An error from `close_stage` or
/// `finish` abandons the attempt with its text as the reason.
pub trait SecureAggregator: fmt::Debug + Send {
    /// Attempt `attempt` of round `round` starts; `seed` is the machine's
    /// [`attempt_seed`](RoundMachine::attempt_seed) for server-side randomness that is published to
    /// clients (a communication graph). Drops every state of an earlier attempt.
    fn start(&mut self, round: u64, attempt: u32, seed: u64);

    /// Validates and absorbs `client`'s input for stage `stage` of the current attempt. On error
    /// nothing changed.
    fn receive(
        &mut self,
        client: ClientId,
        stage: u32,
        input: StageInput<'_>,
    ) -> Result<(), StageRefusal>;

    /// Stage `stage` closed with `survivors` (sorted), who form the next stage's cohort: returns each
    /// survivor's server→client payload for that stage, or why the round cannot go on.
    fn close_stage(
        &mut self,
        stage: u32,
        survivors: &[ClientId],
    ) -> Result<BTreeMap<ClientId, Vec<u8>>, String>;

    /// The last stage closed: the sum, per coordinate, of the inputs of `contributors` (sorted: the
    /// clients whose masked input was accepted), or why it cannot be computed.
    fn finish(&mut self, contributors: &[ClientId]) -> Result<Vec<f64>, String>;
}

/// The server→client payloads of one stage: its `(round, attempt, stage)` and each cohort member's.
type StagePayloads = ((u64, u32, u32), BTreeMap<ClientId, Vec<u8>>);

/// The machine's secure aggregator and the payloads of the current stage. Neither is part of a
/// snapshot, and a clone of the machine has neither: cryptographic state is never duplicated.
#[derive(Default)]
pub(super) struct SecureSlot {
    pub(super) aggregator: Option<Box<dyn SecureAggregator>>,
    /// `(round, attempt, stage)` the payloads belong to, and each cohort member's payload.
    pub(super) payloads: Option<StagePayloads>,
}

impl Clone for SecureSlot {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl fmt::Debug for SecureSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureSlot")
            .field("aggregator", &self.aggregator)
            .field(
                "payloads",
                &self.payloads.as_ref().map(|(k, p)| (k, p.len())),
            )
            .finish()
    }
}

impl RoundMachine {
    /// Installs the secure aggregator of a job whose policy runs secure aggregation: after
    /// construction, and again after [`RoundMachine::recover`] (a snapshot does not hold it). A
    /// secure-aggregation round that starts without one fails the job, naming the omission.
    pub fn set_secure_aggregator(&mut self, aggregator: Box<dyn SecureAggregator>) {
        self.secure.aggregator = Some(aggregator);
        self.secure.payloads = None;
    }

    /// As [`RoundMachine::set_secure_aggregator`], by value.
    pub fn with_secure_aggregator(mut self, aggregator: Box<dyn SecureAggregator>) -> Self {
        self.set_secure_aggregator(aggregator);
        self
    }

    /// The installed secure aggregator, if any (for drivers that inspect it, e.g. in tests).
    pub fn secure_aggregator(&self) -> Option<&dyn SecureAggregator> {
        self.secure.aggregator.as_deref()
    }

    /// The server→client payload of `client`'s secure-aggregation task `(round, attempt, stage)`:
    /// the roster, its share bundle or its unmasking request. Empty at the first stage, for a plain
    /// round, or for a task that is not the current stage's.
    pub fn stage_payload(&self, client: ClientId, round: u64, attempt: u32, stage: u32) -> &[u8] {
        match &self.secure.payloads {
            Some((key, p)) if *key == (round, attempt, stage) => {
                p.get(&client).map_or(&[], Vec::as_slice)
            }
            _ => &[],
        }
    }
}
