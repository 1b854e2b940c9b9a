//! Keys that moved, and simulation-only keys in a job: refused with a position and the new place.
//!
//! The job spec once had its round policy at the top level, and the scenario file had the
//! simulated world's knobs (dropout, training time) in `[round]` and `[secagg]` and the dataset in
//! `[data]`. Each such key is still read (as an opaque value, [`crate::raw`]) only to answer with
//! where it lives now.

use flotilla_core::config_toml::{TomlError, locate};

use crate::SIMULATION_ONLY;
use crate::raw::RawDocument;

/// `(old dotted key, new place)` for every key that moved.
pub const MOVED: &[(&str, &str)] = &[
    ("over_selection", "[round] over_selection"),
    ("min_clients", "[round] min_clients"),
    ("round_deadline_seconds", "[round] deadline_seconds"),
    ("min_report_fraction", "[round] min_report_fraction"),
    ("max_attempts", "[round] max_attempts"),
    ("selection_window_ms", "[round] selection_window_ms"),
    ("retry_after_ms", "[round] retry_after_ms"),
    ("checkin_ttl_seconds", "[round] checkin_ttl_seconds"),
    ("round.dropout", "[simulation] dropout"),
    ("round.train_ticks_min", "[simulation] train_ticks_min"),
    ("round.train_ticks_max", "[simulation] train_ticks_max"),
    ("secagg.unmasking_dropout", "[simulation] unmasking_dropout"),
    ("data.dataset", "[model] dataset"),
];

fn present(doc: &RawDocument, dotted: &str) -> bool {
    match dotted {
        "over_selection" => doc.over_selection.is_some(),
        "min_clients" => doc.min_clients.is_some(),
        "round_deadline_seconds" => doc.round_deadline_seconds.is_some(),
        "min_report_fraction" => doc.min_report_fraction.is_some(),
        "max_attempts" => doc.max_attempts.is_some(),
        "selection_window_ms" => doc.selection_window_ms.is_some(),
        "retry_after_ms" => doc.retry_after_ms.is_some(),
        "checkin_ttl_seconds" => doc.checkin_ttl_seconds.is_some(),
        "round.dropout" => doc.round.as_ref().is_some_and(|r| r.dropout.is_some()),
        "round.train_ticks_min" => doc
            .round
            .as_ref()
            .is_some_and(|r| r.train_ticks_min.is_some()),
        "round.train_ticks_max" => doc
            .round
            .as_ref()
            .is_some_and(|r| r.train_ticks_max.is_some()),
        "secagg.unmasking_dropout" => doc
            .secagg
            .as_ref()
            .is_some_and(|s| s.unmasking_dropout.is_some()),
        "data.dataset" => doc.data.as_ref().is_some_and(|d| d.dataset.is_some()),
        _ => false,
    }
}

/// The first moved key of `doc`, as an error at its position naming its new place.
pub fn check(text: &str, doc: &RawDocument) -> Result<(), TomlError> {
    for (old, new) in MOVED {
        if present(doc, old) {
            let shown = match old.split_once('.') {
                Some((table, key)) => format!("`[{table}] {key}`"),
                None => format!("`{old}` at the top level"),
            };
            return Err(TomlError {
                location: locate(text, old),
                message: format!("{shown} has moved: write it as `{new}`"),
            });
        }
    }
    Ok(())
}

/// The simulation-only keys present in `doc`, in [`SIMULATION_ONLY`] order.
pub fn simulation_keys(doc: &RawDocument) -> Vec<&'static str> {
    SIMULATION_ONLY
        .iter()
        .copied()
        .filter(|k| match *k {
            "clients" => doc.clients.is_some(),
            "eval_every" => doc.eval_every.is_some(),
            "data" => doc.data.is_some(),
            "partition" => doc.partition.is_some(),
            "simulation" => doc.simulation.is_some(),
            "attack" => doc.attack.is_some(),
            _ => false,
        })
        .collect()
}

/// Refuses a job file's simulation-only keys, at the position of the first, naming them all.
pub fn refuse_simulation_keys(text: &str, doc: &RawDocument) -> Result<(), TomlError> {
    let keys = simulation_keys(doc);
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let names: Vec<String> = keys
        .iter()
        .map(|k| match *k {
            "clients" | "eval_every" => format!("`{k}`"),
            t => format!("`[{t}]`"),
        })
        .collect();
    Err(TomlError {
        location: locate(text, first),
        message: format!(
            "{} {} simulation-only: a coordinator job has no simulated clients or data \
             (`flotilla job submit` removes the simulation-only sections of a scenario file)",
            names.join(", "),
            if names.len() == 1 { "is" } else { "are" },
        ),
    })
}
