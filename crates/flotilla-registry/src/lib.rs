//! The model registry's vocabulary and decisions, sans-IO.
//!
//! * [`ModelName`], [`ModelRef`] (`NAME` or `NAME@VERSION`) and [`Stage`];
//! * [`Lineage`]: where a registered version came from;
//! * [`summarize`]: a federated evaluation's [`EvalSummary`] overall and per cohort, with its
//!   [`Fairness`] view;
//! * [`Gate`] and [`check_gate`]: the release gate and its [`GateReport`];
//! * [`in_canary`]: the stable share of clients a canary rollout serves;
//! * [`regressions`]: cohorts whose accuracy dropped beyond a tolerance.
#![forbid(unsafe_code)]

mod canary;
mod eval;
mod gate;
mod lineage;
mod name;
mod regression;

pub use canary::in_canary;
pub use eval::{
    ClientEvalReport, CohortStats, EvalError, EvalSummary, Fairness, MAX_COHORT_LABELS,
    MAX_LABEL_BYTES, OVERALL, check_cohorts, summarize,
};
pub use gate::{Gate, GateError, GateInput, GateReport, RuleOutcome, check_gate};
pub use lineage::{Lineage, Stage, StageError};
pub use name::{MAX_MODEL_NAME_BYTES, ModelName, ModelRef, NameError};
pub use regression::{Regression, regressions};
