//! Typed errors. Three kinds, by what they mean for the round:
//!
//! - [`ParamError`]: a parameter set is invalid (raised at construction, names the parameter).
//! - [`Rejected`]: one message was refused; the receiver's state is unchanged and the round goes on.
//! - [`RoundError`]: the round cannot complete (too few clients, a neighbourhood below threshold, a
//!   secret that does not reconstruct); the state machine is failed and says so on every later call.

use thiserror::Error;

use crate::{ClientId, Stage};

/// An invalid parameter, named, with its valid range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid secure-aggregation parameter `{name}`: {reason}")]
pub struct ParamError {
    /// The parameter (`n`, `t`, `k`, `vector_len`, `clip_range`).
    pub name: &'static str,
    /// What is wrong and the valid range.
    pub reason: String,
}

impl ParamError {
    pub(crate) fn new(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            reason: reason.into(),
        }
    }
}

/// Bytes that are not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The message is larger than the limit for this parameter set.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// The bytes do not decode as a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// A message that was refused. The receiver's state is unchanged; the round goes on without it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejected {
    /// The bytes did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message belongs to another round (e.g. a replay from an earlier round).
    #[error("message for round {got}, this is round {expected}")]
    WrongRound {
        /// This round.
        expected: u64,
        /// The message's round.
        got: u64,
    },
    /// The message belongs to another stage (e.g. a replay of an earlier stage's message).
    #[error("{got:?} message received during stage {expected:?}")]
    WrongStage {
        /// The receiver's current stage.
        expected: Stage,
        /// The stage the message belongs to.
        got: Stage,
    },
    /// The message claims a sender other than the authenticated one.
    #[error("message claims sender {claimed} but came from {authenticated}")]
    SenderMismatch {
        /// Sender named in the message.
        claimed: ClientId,
        /// Sender as authenticated by the transport.
        authenticated: ClientId,
    },
    /// The message is addressed to another client.
    #[error("message addressed to {got}, this is {expected}")]
    WrongRecipient {
        /// The receiver.
        expected: ClientId,
        /// The recipient named in the message.
        got: ClientId,
    },
    /// The sender is not part of this stage's cohort.
    #[error("{0} is not in this stage's cohort")]
    NotInCohort(ClientId),
    /// The sender already sent this stage's message (a replay or a duplicate).
    #[error("duplicate message from {0} in this stage")]
    Duplicate(ClientId),
    /// A vector or list has the wrong length.
    #[error("{what} has length {got}, expected {expected}")]
    WrongLength {
        /// What was measured.
        what: &'static str,
        /// Length required.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// A masked word is not an element of the round's ring (2^16 with quantization to few bits).
    #[error("{client}'s masked word {index} does not fit the {ring_bits}-bit ring")]
    OutOfRing {
        /// The sender.
        client: ClientId,
        /// The first offending coordinate.
        index: usize,
        /// Bits of the round's ring.
        ring_bits: u32,
    },
    /// The round parameters in a server message differ from the client's.
    #[error("round parameters differ from this client's: {0}")]
    ParamsMismatch(String),
    /// A public key is unusable (low order, or reused from another client).
    #[error("unusable public key from {client}: {reason}")]
    InvalidKey {
        /// Whose key.
        client: ClientId,
        /// Why.
        reason: &'static str,
    },
    /// A share or list entry names a client that is not a neighbour where one is required.
    #[error("{peer} is not a neighbour of {client} in the communication graph")]
    NotNeighbour {
        /// The client whose neighbourhood was checked.
        client: ClientId,
        /// The peer that is not in it.
        peer: ClientId,
    },
    /// A list that must be sorted and free of duplicates is not, or does not cover what it must.
    #[error("malformed list: {0}")]
    MalformedList(String),
    /// A secret share failed authentication, decoding or its commitment.
    #[error("bad share of {owner}'s secret held by {holder}: {reason}")]
    BadShare {
        /// The client whose secret was shared.
        owner: ClientId,
        /// The client the share was for.
        holder: ClientId,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A client refuses an unmasking request that would reveal both secrets of one peer.
    #[error("refused: request asks for both the self-mask seed and the mask key of {0}")]
    BothSecretsRequested(ClientId),
    /// A client refuses an unmasking request that does not partition its live neighbourhood.
    #[error("refused unmasking request: {0}")]
    BadUnmaskRequest(String),
}

/// The round cannot complete. Every later call on the failed state machine returns it again.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoundError {
    /// Too few clients remain in the round.
    #[error("stage {stage:?}: {available} clients remain, at least {required} are needed")]
    TooFewClients {
        /// Stage at which it was detected.
        stage: Stage,
        /// Clients left.
        available: usize,
        /// Minimum required.
        required: usize,
    },
    /// A client's neighbourhood has fewer live members than the threshold, so its secrets can no
    /// longer be reconstructed (or could not be if it dropped).
    #[error(
        "stage {stage:?}: {client} has {available} live neighbours holding its shares, threshold is {threshold}"
    )]
    BelowThreshold {
        /// Stage at which it was detected.
        stage: Stage,
        /// The client whose secret is at stake.
        client: ClientId,
        /// Live neighbours holding shares.
        available: usize,
        /// Shares needed (t).
        threshold: usize,
    },
    /// A reconstructed secret does not match its commitment (a dishonest share owner).
    #[error("the {secret} of {client} did not reconstruct to its committed value")]
    ReconstructionFailed {
        /// Whose secret.
        client: ClientId,
        /// Which secret (`self-mask seed` or `mask key`).
        secret: &'static str,
    },
    /// The state machine was asked to do something its stage does not allow.
    #[error("operation not allowed in stage {stage:?}: {what}")]
    WrongStage {
        /// Current stage.
        stage: Stage,
        /// What was attempted.
        what: &'static str,
    },
}

/// What a client's step can fail with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// The server's message was refused; the client's state is unchanged.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The round cannot complete from this client's point of view; the client is failed.
    #[error(transparent)]
    Round(#[from] RoundError),
    /// The caller's update is unusable (wrong length, non-finite value); state unchanged.
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
}
