//! Strategies driven through the round machine: quarantine reaches the commit, server state survives
//! a snapshot and restore bit-exactly.

use flotilla_core::round::*;
use flotilla_core::strategy::{AnomalySpec, StrategyConfig, StrategySpec};
use flotilla_core::{ParamLayout, TensorSpec};

fn policy(rounds: u64, cpr: usize) -> RoundPolicy {
    let mut p = RoundPolicy::new(rounds, cpr);
    p.selection_window_ms = 10;
    p.stage_deadline_ms = 1000;
    p.min_report_fraction = 1.0;
    p
}

fn machine(rounds: u64, cpr: usize, strategy: StrategyConfig, dim: usize) -> RoundMachine {
    let p = policy(rounds, cpr);
    let spec = StrategySpec::from_config(&strategy, p.min_reports()).unwrap();
    let layout = ParamLayout::new(vec![TensorSpec::new("w", [dim])]);
    RoundMachine::with_strategy(p, layout, vec![0.0; dim], 3, spec).unwrap()
}

/// Runs one round in which client `i` of the cohort reports `update(i, global)`; returns the commit.
fn round(
    m: &mut RoundMachine,
    now: u64,
    clients: u64,
    update: &dyn Fn(u64, &[f32]) -> Vec<f32>,
) -> Option<CommitInfo> {
    let mut acts: Vec<Action> = (0..clients)
        .flat_map(|i| {
            m.handle(
                now,
                Event::CheckIn {
                    client: ClientId(i),
                },
            )
        })
        .collect();
    let timer = acts.iter().find_map(|a| {
        if let Action::SetTimer { timer, at_ms } = a {
            Some((*timer, *at_ms))
        } else {
            None
        }
    })?;
    acts = m.handle(timer.1, Event::TimerFired(timer.0));
    let cohort: Vec<(ClientId, Task)> = acts
        .iter()
        .filter_map(|a| {
            if let Action::Configure { client, task } = a {
                Some((*client, task.clone()))
            } else {
                None
            }
        })
        .collect();
    let global = m.global().to_vec();
    let mut out = Vec::new();
    for (c, t) in cohort {
        let u = update(c.0, &global);
        out.extend(m.handle(
            timer.1 + 1,
            Event::Report {
                client: c,
                round: t.round,
                attempt: t.attempt,
                stage: t.stage,
                num_samples: 10,
                update: &u,
                metrics: ReportMetrics::default(),
            },
        ));
    }
    out.into_iter().find_map(|a| {
        if let Action::Commit(c) = a {
            Some(c)
        } else {
            None
        }
    })
}

#[test]
fn anomaly_filter_quarantines_an_attacker_and_the_commit_says_why() {
    let cfg = StrategyConfig {
        name: "fedavg".into(),
        anomaly: Some(AnomalySpec {
            max_norm_z: 3.0,
            max_cosine_distance: 1.0,
        }),
        ..StrategyConfig::default()
    };
    let mut m = machine(1, 6, cfg, 4);
    // Honest clients move the model by ≈ +1 per coordinate; client 5 reports −10× that.
    let honest = |i: u64, g: &[f32]| {
        g.iter()
            .enumerate()
            .map(|(j, x)| x + 1.0 + 0.01 * (i as f32 + j as f32))
            .collect()
    };
    let commit = round(&mut m, 0, 6, &|i, g| {
        if i == 5 {
            g.iter().map(|x| x - 10.0).collect()
        } else {
            honest(i, g)
        }
    })
    .expect("round commits");
    assert_eq!(commit.quarantined.len(), 1, "{:?}", commit.quarantined);
    assert_eq!(commit.quarantined[0].client, 5);
    assert!(!commit.quarantined[0].reason.is_empty());
    assert!(!commit.participants.contains(&ClientId(5)));
    assert!(
        m.global().iter().all(|v| (0.9..1.2).contains(v)),
        "attacker left out: {:?}",
        m.global()
    );
}

#[test]
fn krum_leaves_out_distant_updates() {
    let cfg = StrategyConfig {
        name: "krum".into(),
        f: Some(1),
        m: Some(3),
        ..StrategyConfig::default()
    };
    let mut m = machine(1, 5, cfg, 3);
    let commit = round(&mut m, 0, 5, &|i, g| {
        if i == 2 {
            vec![100.0; 3]
        } else {
            g.iter().map(|x| x + 1.0 + 0.1 * i as f32).collect()
        }
    })
    .expect("round commits");
    assert!(
        commit.quarantined.iter().any(|q| q.client == 2),
        "{:?}",
        commit.quarantined
    );
    assert!(m.global().iter().all(|v| *v < 2.0), "{:?}", m.global());
}

#[test]
fn fedadam_state_survives_snapshot_and_restore_bit_exactly() {
    let cfg = StrategyConfig {
        name: "fedadam".into(),
        server_lr: Some(0.05),
        ..StrategyConfig::default()
    };
    let upd = |i: u64, g: &[f32]| {
        g.iter()
            .enumerate()
            .map(|(j, x)| x + 0.3 - 0.1 * ((i + j as u64) % 3) as f32)
            .collect()
    };
    let mut reference = machine(4, 3, cfg.clone(), 5);
    for r in 0..4 {
        round(&mut reference, r * 100, 3, &upd).expect("commit");
    }
    let mut m = machine(4, 3, cfg, 5);
    for r in 0..2 {
        round(&mut m, r * 100, 3, &upd).expect("commit");
    }
    let text = serde_json::to_string(&m).unwrap();
    let global = m.global().to_vec();
    let mut m: RoundMachine = serde_json::from_str(&text).unwrap();
    m.recover(global).unwrap();
    for r in 2..4 {
        round(&mut m, 1000 + r * 100, 3, &upd).expect("commit");
    }
    assert!(m.is_finished());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(m.global()), bits(reference.global()));
    assert_eq!(
        m.strategy(),
        reference.strategy(),
        "moments restored exactly"
    );
}
