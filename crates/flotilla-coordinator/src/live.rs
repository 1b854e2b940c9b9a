//! What a running job is doing right now, in words, for the admin API's `current` and `reason`:
//! its phase (waiting, training, retrying, halted, …) and, unless it is simply making progress,
//! why not. Reads the job's state under its lock; the texts themselves are `reasons.rs`'s.

use flotilla_core::round::{Activity, StageKind};

use crate::reasons::waiting_text;
use crate::retry::HEAL_INTERVAL;
use crate::state::JobInner;

/// A running job's state for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveStatus {
    /// `waiting`, `selecting`, `training`, `secagg`, `retrying`, `halted`, `finished` or `failed`.
    pub phase: &'static str,
    pub available_clients: u64,
    pub needed_clients: u64,
    /// Deadline of the stage collecting reports, Unix ms.
    pub deadline_ms: Option<u64>,
    /// Present when the job is not simply making progress.
    pub reason: Option<String>,
}

/// What the job is doing and, unless it is simply making progress, why not.
pub(crate) fn live_status(inner: &JobInner, now_ms: u64) -> LiveStatus {
    let m = &inner.machine;
    let (round, _) = m.current_round();
    let fedbuff = m.strategy().spec().fedbuff;
    let needed = match fedbuff {
        Some(fb) => fb.buffer_size as u64,
        None => m.policy().min_clients as u64,
    };
    let available = m.available_clients(now_ms);
    let activity = m.activity();
    let retrying = inner
        .notes
        .retry
        .as_ref()
        .filter(|r| r.round == round && fedbuff.is_none());
    let mut reasons: Vec<String> = Vec::new();
    let phase = if let Some(h) = &inner.halted {
        // The heal task resumes the job once the store accepts writes again (heal.rs).
        reasons.push(format!(
            "halted: {h}; retrying every {} s",
            HEAL_INTERVAL.as_secs()
        ));
        "halted"
    } else {
        if let Some(r) = retrying {
            reasons.push(r.text.clone());
        }
        match activity {
            Activity::WaitingForClients => {
                reasons.push(waiting_text(needed as usize, available));
                "waiting"
            }
            Activity::Selecting => "selecting",
            _ if matches!(activity, Activity::Stage { .. }) && retrying.is_some() => "retrying",
            Activity::Stage {
                kind: StageKind::Train,
                ..
            } => "training",
            Activity::Stage { .. } => "secagg",
            Activity::Finished => "finished",
            Activity::Failed => {
                reasons.clear();
                reasons.push(m.failure().unwrap_or("failed").to_owned());
                "failed"
            }
            _ => "running",
        }
    };
    let deadline_ms = match activity {
        Activity::Stage { .. } if fedbuff.is_none() => inner.deadline_ms,
        _ => None,
    };
    LiveStatus {
        phase,
        available_clients: available as u64,
        needed_clients: needed,
        deadline_ms,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}
