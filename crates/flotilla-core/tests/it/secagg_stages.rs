//! The round machine's secure-aggregation stages, driven by hand with a fake aggregator
//! ([`crate::fake_secagg`]): the machine does the bookkeeping (cohorts, deadlines, duplicates,
//! survivors) and calls its aggregator; the fake records the calls. Failures of the aggregator,
//! recovery and the strategies are in `secagg_failures`.

use flotilla_core::round::*;

use crate::fake_secagg::*;

#[test]
fn four_stages_close_in_order_and_commit_the_unweighted_mean() {
    let (mut m, fake) = machine(policy(1, 4), 3);
    // Deltas summing to (0.4, -2.0): mean delta (0.1, -0.5).
    fake.state().vectors = [
        (ClientId(0), vec![0.1, -1.0]),
        (ClientId(1), vec![0.3, 0.0]),
        (ClientId(2), vec![0.0, -0.5]),
        (ClientId(3), vec![0.0, -0.5]),
    ]
    .into();
    let cohort = open(&mut m, 0, 0..4);
    assert_eq!(cohort.len(), 4);
    assert!(
        cohort
            .iter()
            .all(|(_, t)| t.stage == ADV && t.kind == StageKind::AdvertiseKeys)
    );
    assert_eq!(m.current_stage(), Some((ADV, StageKind::AdvertiseKeys)));
    // The aggregator started for this attempt with the machine's attempt seed, before any message.
    assert_eq!(
        fake.state().calls,
        vec![Call::Start {
            round: 1,
            attempt: 1,
            seed: m.attempt_seed()
        }]
    );
    // Nothing to serve at the first stage.
    assert!(m.stage_payload(ClientId(0), 1, 1, ADV).is_empty());

    let everyone = clients(0..4);
    let mut cur = cohort;
    for (stage, kind) in [
        (ADV, StageKind::AdvertiseKeys),
        (SHARE, StageKind::ShareKeys),
        (MASKED, StageKind::MaskedInput),
    ] {
        let calls_before = fake.state().calls.len();
        let acts = all_report(&mut m, 20, &cur);
        // Each message reached the aggregator as sent, then the stage closed with all four: the
        // aggregator's stage close comes after the last message and before the next stage.
        let calls = fake.state().calls[calls_before..].to_vec();
        let mut want: Vec<Call> = cur
            .iter()
            .map(|(c, t)| Call::Receive {
                client: *c,
                stage,
                input: honest_input(*c, t),
                accepted: true,
            })
            .collect();
        want.push(Call::CloseStage {
            stage,
            survivors: everyone.clone(),
        });
        assert_eq!(calls, want, "stage {stage} ({})", kind.name());
        cur = configured(&acts);
        assert_eq!(cur.len(), 4);
        assert!(cur.iter().all(|(_, t)| t.stage == stage + 1
            && t.kind == StageKind::SECURE_AGGREGATION[stage as usize + 1]));
        // The next stage's payloads are there when its Configures are carried out, one per survivor.
        for (c, t) in &cur {
            assert_eq!(
                m.stage_payload(*c, t.round, t.attempt, t.stage),
                FakeSecAgg::payload(stage, *c),
                "{c} at stage {}",
                t.stage
            );
        }
        assert!(timers(&acts).iter().any(|(t, at)| *t
            == Timer::Deadline {
                round: 1,
                attempt: 1,
                stage: stage + 1
            }
            && *at == 1020));
        assert_eq!(m.rounds_committed(), 0);
    }
    let acts = all_report(&mut m, 30, &cur);
    // The last stage is not "closed" but finished, with the four contributors.
    assert_eq!(fake.state().closes().len(), 3);
    assert_eq!(fake.state().finishes(), vec![everyone.clone()]);
    let commit = commit(&acts).expect("commit");
    assert_eq!(commit.participants, everyone);
    assert_eq!((commit.round, commit.attempt), (1, 1));
    assert_eq!(
        commit.num_samples,
        10 + 11 + 12 + 13,
        "the samples reported at the masked-input stage"
    );
    assert_eq!(commit.train_loss, 2.0);
    assert!(acts.contains(&Action::JobFinished));
    assert!(
        (m.global()[0] - 1.1).abs() < 1e-6 && (m.global()[1] + 1.5).abs() < 1e-6,
        "{:?}",
        m.global()
    );
    // The round is over: no payload is served any more.
    assert!(m.stage_payload(ClientId(0), 1, 1, UNMASK).is_empty());
}

#[test]
fn stage_payloads_are_served_for_exactly_the_survivors_of_the_current_stage() {
    let (mut m, _fake) = machine(policy(1, 4), 7);
    let cohort = open(&mut m, 0, 0..5);
    assert_eq!(cohort.len(), 4);
    let outsider = (0..5)
        .map(ClientId)
        .find(|c| cohort.iter().all(|(x, _)| x != c))
        .unwrap();
    // Three of four advertise, one fails its task: the stage closes with three survivors.
    let (gone, gone_task) = cohort[3].clone();
    all_report_but(&mut m, &cohort, &[gone.0]);
    let acts = m.handle(
        25,
        Event::TaskFailed {
            client: gone,
            round: 1,
            attempt: 1,
            stage: ADV,
        },
    );
    let s1 = configured(&acts);
    assert_eq!(s1.len(), 3);
    for (c, _) in &s1 {
        assert_eq!(
            m.stage_payload(*c, 1, 1, SHARE),
            FakeSecAgg::payload(ADV, *c)
        );
        // Only for this task: not another stage, attempt or round.
        assert!(m.stage_payload(*c, 1, 1, ADV).is_empty());
        assert!(m.stage_payload(*c, 1, 1, MASKED).is_empty());
        assert!(m.stage_payload(*c, 1, 2, SHARE).is_empty());
        assert!(m.stage_payload(*c, 2, 1, SHARE).is_empty());
    }
    assert!(m.stage_payload(gone, 1, 1, SHARE).is_empty(), "a dropout");
    assert!(m.stage_payload(outsider, 1, 1, SHARE).is_empty());
    // A dropout's late message for the closed stage is refused.
    let late = stage_message(&mut m, 26, gone, &gone_task, 1);
    assert!(matches!(
        late[0],
        Action::Reject {
            reason: RejectReason::WrongStage {
                expected: SHARE,
                got: ADV
            },
            ..
        }
    ));
    // The next stage's payloads replace the previous ones.
    let s2 = configured(&all_report(&mut m, 30, &s1));
    for (c, _) in &s2 {
        assert!(m.stage_payload(*c, 1, 1, SHARE).is_empty());
        assert_eq!(
            m.stage_payload(*c, 1, 1, MASKED),
            FakeSecAgg::payload(SHARE, *c)
        );
    }
    // A reconnecting member of the cohort is configured again and still finds its payload.
    let (c, t) = &s2[0];
    let again = m.handle(31, Event::CheckIn { client: *c });
    assert_eq!(configured(&again), vec![(*c, t.clone())]);
    assert_eq!(
        m.stage_payload(*c, 1, 1, MASKED),
        FakeSecAgg::payload(SHARE, *c)
    );
}

#[test]
fn dropouts_shrink_the_next_cohort_but_unmasking_dropouts_still_contribute() {
    let (mut m, fake) = machine(policy(1, 5), 9);
    fake.state().vectors = (0..5).map(|c| (ClientId(c), vec![0.1, 0.0])).collect();
    let cohort = open(&mut m, 0, 0..5);
    // Stage 0: client 4 is lost, the other four report → stage closes early with 4 survivors.
    all_report_but(&mut m, &cohort, &[4]);
    let acts = m.handle(
        25,
        Event::ClientLost {
            client: ClientId(4),
        },
    );
    let s1 = configured(&acts);
    assert_eq!(ids(&s1), vec![0, 1, 2, 3]);
    assert_eq!(fake.state().closes(), vec![(ADV, clients(0..4))]);
    // A late message of the lost client for stage 0 is refused and never reaches the aggregator.
    let receives = fake.state().receives();
    let late = stage_message(&mut m, 26, ClientId(4), &cohort[4].1, 1);
    assert!(matches!(
        late[0],
        Action::Reject {
            reason: RejectReason::WrongStage {
                expected: SHARE,
                got: ADV
            },
            ..
        }
    ));
    assert_eq!(fake.state().receives(), receives);
    // Stage 1: everyone shares.
    let s2 = configured(&all_report(&mut m, 30, &s1));
    // Stage 2: client 3 never sends its masked input; the deadline closes the stage with 3 (≥ 3 needed).
    all_report_but(&mut m, &s2, &[3]);
    let deadline = Timer::Deadline {
        round: 1,
        attempt: 1,
        stage: MASKED,
    };
    let acts = m.handle(5000, Event::TimerFired(deadline));
    assert_eq!(fake.state().closes()[2], (MASKED, clients(0..3)));
    let s3 = configured(&acts);
    assert_eq!(ids(&s3), vec![0, 1, 2]);
    assert!(m.stage_payload(ClientId(3), 1, 1, UNMASK).is_empty());
    // Stage 3: client 2 dies after its masked input; the deadline closes unmasking with 2 answers,
    // and the contributors are still the three whose masked input arrived.
    all_report_but(&mut m, &s3, &[2]);
    let acts = m.handle(
        7000,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 1,
            stage: UNMASK,
        }),
    );
    assert_eq!(fake.state().finishes(), vec![clients(0..3)]);
    assert_eq!(fake.state().closes().len(), 3, "the last stage finishes");
    let commit = commit(&acts).expect("commit");
    assert_eq!(commit.participants, clients(0..3));
    assert_eq!(commit.num_samples, 15, "three masked inputs of 5 samples");
    // Sum (0.3, 0) over 3 contributors.
    assert!((m.global()[0] - 1.1).abs() < 1e-6, "{:?}", m.global());
}

#[test]
fn too_few_survivors_at_any_stage_abandon_the_attempt_with_the_stage_named() {
    for (stage, name) in [
        (ADV, "advertise_keys"),
        (SHARE, "share_keys"),
        (MASKED, "masked_input"),
    ] {
        let (mut m, fake) = machine(policy(1, 5), 1);
        let mut cur = open(&mut m, 0, 0..5);
        for _ in 0..stage {
            cur = configured(&all_report(&mut m, 10, &cur));
        }
        // Only 2 of the 3 needed (⌈5 × 0.6⌉) report before the deadline.
        all_report_but(&mut m, &cur, &[2, 3, 4]);
        let closes = fake.state().closes().len();
        let acts = m.handle(
            9999,
            Event::TimerFired(Timer::Deadline {
                round: 1,
                attempt: 1,
                stage,
            }),
        );
        let (round, attempt, reason, cause) =
            abandoned(&acts).unwrap_or_else(|| panic!("stage {stage}: {acts:?}"));
        assert_eq!((round, attempt), (1, 1));
        assert_eq!(cause, AbandonCause::TooFewReports);
        assert!(
            reason.contains(name) && reason.contains("fewer than 3"),
            "{reason}"
        );
        // The aggregator is not asked to close a stage the machine abandoned.
        assert_eq!(fake.state().closes().len(), closes, "stage {stage}");
        assert!(fake.state().finishes().is_empty());
        assert!(configured(&acts).is_empty());
        assert_eq!(m.current_round(), (1, 2));
        assert_eq!(m.current_stage(), None);
    }
    // Unmasking needs one answer; with none the attempt is abandoned too, and nothing is unmasked.
    let (mut m, fake) = machine(policy(1, 3), 1);
    let mut cur = open(&mut m, 0, 0..3);
    for _ in 0..3 {
        cur = configured(&all_report(&mut m, 10, &cur));
    }
    assert_eq!(cur.len(), 3);
    let acts = m.handle(
        9999,
        Event::TimerFired(Timer::Deadline {
            round: 1,
            attempt: 1,
            stage: UNMASK,
        }),
    );
    assert!(abandoned(&acts).unwrap().2.contains("unmasking"));
    assert!(fake.state().finishes().is_empty());
}

#[test]
fn an_attempt_abandoned_for_too_few_reports_serves_no_payload() {
    // `stage_payload` is empty "for a task that is not the current stage's"; once the attempt is
    // abandoned no stage is current. The machine clears the payloads when the aggregator fails, on
    // recover and when the next attempt opens, but not on a too-few-reports abandon.
    for stage in [SHARE, MASKED, UNMASK] {
        let (mut m, _fake) = machine(policy(1, 3), 1);
        let mut cur = open(&mut m, 0, 0..3);
        for _ in 0..stage {
            cur = configured(&all_report(&mut m, 10, &cur));
        }
        let (c, t) = cur[0].clone();
        assert_eq!(
            m.stage_payload(c, 1, 1, stage),
            FakeSecAgg::payload(stage - 1, c)
        );
        // Nobody answers: the deadline abandons the attempt.
        let acts = m.handle(
            9999,
            Event::TimerFired(Timer::Deadline {
                round: 1,
                attempt: 1,
                stage,
            }),
        );
        assert_eq!(
            abandoned(&acts).expect("abandoned").3,
            AbandonCause::TooFewReports
        );
        assert_eq!(m.current_stage(), None);
        assert!(
            m.stage_payload(c, t.round, t.attempt, t.stage).is_empty(),
            "stage {stage}: the abandoned attempt's payload is still served"
        );
    }
}

/// Asserts `acts` is exactly one rejection of `what` and returns its reason.
fn rejection(acts: &[Action], what: &str) -> RejectReason {
    assert_eq!(acts.len(), 1, "{what}: {acts:?}");
    match &acts[0] {
        Action::Reject { reason, .. } => reason.clone(),
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn bad_stage_messages_are_rejected_change_nothing_and_never_reach_the_aggregator() {
    let (mut m, fake) = machine(policy(1, 3), 5);
    let cohort = open(&mut m, 0, 0..4);
    let (c0, t0) = cohort[0].clone();
    stage_message(&mut m, 10, c0, &t0, 0);
    let before = fingerprint(&m);
    let receives = fake.state().receives();
    let outsider = (0..4)
        .map(ClientId)
        .find(|c| cohort.iter().all(|(x, _)| x != c))
        .unwrap();
    let (c1, t1) = cohort[1].clone();
    let plain = m.handle(
        11,
        Event::Report {
            client: c1,
            round: 1,
            attempt: 1,
            stage: ADV,
            num_samples: 1,
            update: &[0.0, 0.0],
            metrics: ReportMetrics::default(),
        },
    );
    let moved = |f: &dyn Fn(&mut Task)| {
        let mut t = t1.clone();
        f(&mut t);
        t
    };
    let cases: Vec<(Vec<Action>, RejectReason, &str)> = vec![
        (
            stage_message(&mut m, 11, outsider, &t0, 1),
            RejectReason::NotSelected,
            "not selected",
        ),
        (
            stage_message(&mut m, 11, c0, &t0, 1),
            RejectReason::Duplicate,
            "duplicate",
        ),
        (
            stage_message(&mut m, 11, c1, &moved(&|t| t.stage = SHARE), 1),
            RejectReason::WrongStage {
                expected: ADV,
                got: SHARE,
            },
            "wrong stage",
        ),
        (
            stage_message(&mut m, 11, c1, &moved(&|t| t.attempt = 2), 1),
            RejectReason::WrongRound {
                round: 1,
                attempt: 1,
                got_round: 1,
                got_attempt: 2,
            },
            "wrong attempt",
        ),
        (
            stage_message(&mut m, 11, c1, &moved(&|t| t.round = 0), 1),
            RejectReason::WrongRound {
                round: 1,
                attempt: 1,
                got_round: 0,
                got_attempt: 1,
            },
            "wrong round",
        ),
        (
            send(&mut m, 11, c1, &t1, &Input::Masked(vec![1, 2]), 1),
            RejectReason::WrongStageKind {
                stage: ADV,
                kind: "advertise_keys",
            },
            "a masked vector at a stage that takes a message",
        ),
        (
            plain,
            RejectReason::WrongStageKind {
                stage: ADV,
                kind: "advertise_keys",
            },
            "a Report with parameters at a secagg stage",
        ),
    ];
    for (acts, want, what) in &cases {
        assert_eq!(&rejection(acts, what), want, "{what}");
    }
    assert_eq!(
        fingerprint(&m),
        before,
        "a rejected message changed the machine"
    );
    assert_eq!(
        fake.state().receives(),
        receives,
        "a refused message reached the aggregator"
    );

    // The aggregator refuses: the machine rejects with its refusal and records nothing, so the
    // client may send again once the aggregator takes it.
    fake.state().refuse.insert((c1, ADV));
    let acts = stage_message(&mut m, 12, c1, &t1, 1);
    assert_eq!(
        rejection(&acts, "refused by the aggregator"),
        RejectReason::SecureAggregation(FakeState::refusal())
    );
    assert_eq!(fingerprint(&m), before);
    assert_eq!(
        fake.state().calls.last(),
        Some(&Call::Receive {
            client: c1,
            stage: ADV,
            input: honest_input(c1, &t1),
            accepted: false
        })
    );
    assert_eq!(m.outstanding().len(), 2, "{:?}", m.outstanding());
    fake.state().refuse.clear();
    let acts = stage_message(&mut m, 13, c1, &t1, 1);
    assert!(matches!(acts[0], Action::Accepted { .. }), "{acts:?}");

    // At the masked-input stage the sample count is checked like a plain report's, and a message
    // (rather than a masked vector) is the wrong kind.
    let (mut m, fake) = machine(policy(1, 3), 5);
    let mut cur = open(&mut m, 0, 0..3);
    for _ in 0..2 {
        cur = configured(&all_report(&mut m, 10, &cur));
    }
    let (c, t) = cur[0].clone();
    assert_eq!(t.kind, StageKind::MaskedInput);
    let before = fingerprint(&m);
    let receives = fake.state().receives();
    let acts = stage_message(&mut m, 11, c, &t, 0);
    assert!(matches!(
        rejection(&acts, "no samples"),
        RejectReason::BadSampleCount { got: 0, .. }
    ));
    let acts = stage_message(&mut m, 11, c, &t, u64::MAX);
    assert!(matches!(
        rejection(&acts, "too many samples"),
        RejectReason::BadSampleCount { .. }
    ));
    let acts = send(&mut m, 11, c, &t, &Input::Message(vec![7]), 1);
    assert_eq!(
        rejection(&acts, "a message at the masked stage"),
        RejectReason::WrongStageKind {
            stage: MASKED,
            kind: "masked_input"
        }
    );
    assert_eq!(fingerprint(&m), before);
    assert_eq!(fake.state().receives(), receives);

    // A StageMessage in a plain round is refused as the wrong kind.
    let mut p = policy(1, 2);
    p.stages = vec![StageKind::Train];
    let mut m = RoundMachine::new(p, layout(2), vec![0.0; 2], 5).unwrap();
    let cohort = open(&mut m, 0, 0..2);
    let acts = send(
        &mut m,
        11,
        cohort[0].0,
        &cohort[0].1,
        &Input::Message(vec![1]),
        1,
    );
    assert!(matches!(
        rejection(&acts, "a stage message in a plain round"),
        RejectReason::WrongStageKind { kind: "train", .. }
    ));
}

#[test]
fn a_refused_stage_message_never_reaches_the_aggregator() {
    // Over-selection: 5 (⌈3 × 1.6⌉) selected for 3, so the stage fills up before everyone reported.
    let mut p = policy(1, 3);
    p.over_selection = 1.6;
    let (mut m, fake) = machine(p, 4);
    let cohort = open(&mut m, 0, 0..6);
    assert_eq!(cohort.len(), 5);
    let outsider = (0..6)
        .map(ClientId)
        .find(|c| cohort.iter().all(|(x, _)| x != c))
        .unwrap();
    let (c0, t0) = cohort[0].clone();
    let receives = || fake.state().receives();
    assert_eq!(
        rejection(&stage_message(&mut m, 1, outsider, &t0, 1), "outsider"),
        RejectReason::NotSelected
    );
    assert_eq!(receives(), 0);
    assert!(matches!(
        stage_message(&mut m, 1, c0, &t0, 1)[0],
        Action::Accepted { .. }
    ));
    assert_eq!(receives(), 1);
    assert_eq!(
        rejection(&stage_message(&mut m, 1, c0, &t0, 1), "duplicate"),
        RejectReason::Duplicate
    );
    assert_eq!(receives(), 1);
    // Two more fill the stage, which closes: the late ones are refused without the aggregator
    // ever holding their keys (its roster must be the machine's survivors).
    assert!(matches!(
        stage_message(&mut m, 1, cohort[1].0, &cohort[1].1, 1)[0],
        Action::Accepted { .. }
    ));
    let acts = stage_message(&mut m, 1, cohort[2].0, &cohort[2].1, 1);
    assert!(matches!(acts[0], Action::Accepted { .. }));
    assert_eq!(
        fake.state().closes(),
        vec![(ADV, vec![c0, cohort[1].0, cohort[2].0])]
    );
    assert_eq!(receives(), 3);
    let late = stage_message(&mut m, 2, cohort[3].0, &cohort[3].1, 1);
    assert!(matches!(
        rejection(&late, "late"),
        RejectReason::WrongStage { .. }
    ));
    assert_eq!(receives(), 3);
    // A machine without an aggregator refuses a secure message too (cannot happen once a round
    // opened, as the first stage does not open without one; this clone has none).
    let mut copy = m.clone();
    assert!(
        copy.secure_aggregator().is_none(),
        "a clone holds no aggregator"
    );
    let s1 = configured(&acts);
    let (c, t) = &s1[0];
    assert!(matches!(
        rejection(&stage_message(&mut copy, 3, *c, t, 1), "no aggregator"),
        RejectReason::SecureAggregation(StageRefusal {
            code: "secagg_no_state",
            ..
        })
    ));
    assert_eq!(receives(), 3);
}
