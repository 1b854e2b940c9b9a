//! People's renderings of the registry's answers (`flotilla model list|show|gate`).

use std::fmt::Write as _;

use flotilla_coordinator::api::{ModelDetail, RegisteredModelInfo, VersionDetail};
use flotilla_registry::{Gate, GateReport};

use crate::admin_view::{Clock, Table, clean, num, thousands};

/// `model list`.
pub(super) fn model_list(models: &[RegisteredModelInfo]) -> String {
    if models.is_empty() {
        return "no registered models: `flotilla model register --job ID --name NAME`\n".into();
    }
    let clock = Clock::local();
    let mut t = Table::new(&[
        ("NAME", false),
        ("TENANT", false),
        ("VERSIONS", true),
        ("PRODUCTION", true),
        ("CANARY", false),
        ("GATE", false),
        ("UPDATED", false),
    ]);
    for m in models {
        t.row(vec![
            clean(&m.name),
            clean(&m.tenant),
            m.latest_version.to_string(),
            m.production.map_or_else(|| "-".into(), |v| v.to_string()),
            m.canary.map_or_else(
                || "-".into(),
                |c| format!("v{} at {}%", c.version, c.percent),
            ),
            if m.gate.as_ref().is_some_and(|g| !rules(g).is_empty()) {
                "set"
            } else {
                "-"
            }
            .into(),
            clock.relative(m.updated_at_ms),
        ]);
    }
    t.render()
}

/// The configured rules of a gate, as `(rule, value)`.
fn rules(g: &Gate) -> Vec<(&'static str, String)> {
    let mut r = Vec::new();
    if let Some(v) = g.min_accuracy {
        r.push(("min_accuracy", num(v)));
    }
    if let Some(v) = g.max_regression_points {
        r.push(("max_regression", format!("{} points", num(v))));
    }
    if let Some(v) = g.max_cohort_regression_points {
        r.push(("max_cohort_regression", format!("{} points", num(v))));
    }
    if let Some(v) = g.max_epsilon {
        r.push(("max_epsilon", num(v)));
    }
    if g.require_secagg {
        r.push(("require_secagg", "yes".into()));
    }
    if let Some(v) = g.min_eval_clients {
        r.push(("min_eval_clients", v.to_string()));
    }
    if g.auto_staging {
        r.push(("auto_staging", "yes".into()));
    }
    r
}

/// `model gate show`.
pub(super) fn gate(g: Option<&Gate>) -> String {
    let r = g.map(rules).unwrap_or_default();
    if r.is_empty() {
        return "  no rules: every promotion passes (`flotilla model gate set NAME …`)\n".into();
    }
    let mut t = Table::new(&[("RULE", false), ("LIMIT", false)]);
    for (rule, v) in r {
        t.row(vec![rule.into(), v]);
    }
    t.render()
}

/// A gate report as a table.
pub(super) fn gate_report(r: &GateReport) -> String {
    let mut out = format!("gate: {}\n", if r.passed { "passed" } else { "refused" });
    let mut t = Table::new(&[("RULE", false), ("VERDICT", false), ("DETAIL", false)]);
    for rule in &r.rules {
        t.row(vec![
            rule.rule.clone(),
            if rule.passed { "pass" } else { "FAIL" }.into(),
            clean(&rule.detail),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `model show NAME`: the model and its versions.
pub(super) fn model_detail(m: &ModelDetail) -> String {
    let clock = Clock::local();
    let mut out = String::new();
    let i = &m.model;
    let _ = writeln!(
        out,
        "model {} (tenant {})",
        clean(&i.name),
        clean(&i.tenant)
    );
    let _ = writeln!(
        out,
        "  production  {}",
        i.production
            .map_or_else(|| "none".into(), |v| format!("v{v}"))
    );
    if let Some(c) = i.canary {
        let _ = writeln!(
            out,
            "  canary      v{} for {}% of clients",
            c.version, c.percent
        );
    }
    let _ = writeln!(
        out,
        "  created     {} by {}",
        clock.both(i.created_at_ms),
        clean(&i.created_by)
    );
    out.push_str("release gate\n");
    out.push_str(&gate(i.gate.as_ref()));
    let mut t = Table::new(&[
        ("VERSION", true),
        ("STAGE", false),
        ("JOB", true),
        ("ROUND", true),
        ("SHA256", false),
        ("REGISTERED", false),
        ("BY", false),
    ]);
    for v in &m.versions {
        t.row(vec![
            v.version.to_string(),
            v.stage.to_string(),
            v.job_id.to_string(),
            v.round.to_string(),
            v.model_sha256
                .get(..12)
                .unwrap_or(&v.model_sha256)
                .to_owned(),
            clock.relative(v.created_at_ms),
            clean(&v.registered_by),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `model show NAME@V`: lineage, stage, gate report, evaluations.
pub(super) fn version_detail(d: &VersionDetail) -> String {
    let clock = Clock::local();
    let v = &d.version;
    let l = &v.lineage;
    let mut out = String::new();
    let _ = writeln!(out, "{}@{}  {}", clean(&v.name), v.version, v.stage);
    let _ = writeln!(out, "lineage");
    let _ = writeln!(
        out,
        "  job            {} ({}), tenant {}",
        l.job_id,
        clean(&l.job_name),
        clean(&l.tenant)
    );
    let _ = writeln!(out, "  round          {} of {}", l.round, l.rounds_total);
    let parts: Vec<String> = l.participants.iter().map(u64::to_string).collect();
    let _ = writeln!(
        out,
        "  participants   {} (rounds 1..={}; {} in all)",
        parts.join(", "),
        l.participants.len(),
        l.participants.iter().sum::<u64>()
    );
    let _ = writeln!(out, "  spec sha256    {}", l.spec_sha256);
    let _ = writeln!(out, "  strategy       {}", clean(&l.strategy));
    let _ = writeln!(
        out,
        "  secagg         {}",
        if l.secagg { "on" } else { "off" }
    );
    match (l.epsilon, l.delta) {
        (Some(e), Some(dl)) => {
            let _ = writeln!(out, "  privacy        ε = {} at δ = {dl:e}", num(e));
        }
        (Some(e), None) => {
            let _ = writeln!(out, "  privacy        ε = {}", num(e));
        }
        _ => {
            let _ = writeln!(out, "  privacy        no differential privacy");
        }
    }
    let _ = writeln!(out, "  code version   {}", clean(&l.code_version));
    if let Some(p) = l.parent_version {
        let _ = writeln!(out, "  parent         {}@{p}", clean(&v.name));
    }
    let _ = writeln!(out, "  params sha256  {}", v.model_sha256);
    let _ = writeln!(
        out,
        "  parameters     {} f32 in {} tensors",
        thousands(v.num_params),
        v.tensors.len()
    );
    let _ = writeln!(
        out,
        "  registered     {} by {}",
        clock.both(v.created_at_ms),
        clean(&v.registered_by)
    );
    match &v.gate_report {
        Some(r) => out.push_str(&gate_report(r)),
        None => out.push_str("gate: not checked yet (it runs when the version is promoted)\n"),
    }
    if d.evaluations.is_empty() {
        let _ = writeln!(
            out,
            "evaluations: none yet (`flotilla model evaluate {}@{}`)",
            clean(&v.name),
            v.version
        );
        return out;
    }
    out.push_str("evaluations (newest first)\n");
    let mut t = Table::new(&[
        ("ID", true),
        ("KIND", false),
        ("COHORT", false),
        ("CLIENTS", true),
        ("SAMPLES", true),
        ("ACCURACY", true),
        ("LOSS", true),
    ]);
    for e in &d.evaluations {
        let s = &e.summary;
        let acc = |a: Option<f64>| a.map_or_else(|| "-".into(), num);
        t.row(vec![
            e.id.to_string(),
            e.kind.clone(),
            "overall".into(),
            s.overall.clients.to_string(),
            thousands(s.overall.samples),
            acc(s.overall.accuracy),
            num(s.overall.loss),
        ]);
        for (cohort, c) in &s.cohorts {
            t.row(vec![
                String::new(),
                String::new(),
                clean(cohort),
                c.clients.to_string(),
                thousands(c.samples),
                acc(c.accuracy),
                num(c.loss),
            ]);
        }
    }
    out.push_str(&t.render());
    out
}
