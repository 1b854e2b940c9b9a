//! `RoundAggregator`, SecAgg+ as the round machine's secure aggregator: whole rounds with real
//! clients, what the server holds at every step, and refusals.

use std::collections::BTreeMap;

use flotilla_core::round::{ClientId, SecureAggregator, StageInput, StageRefusal};
use flotilla_secagg::{Client, ClientMessage, HeldVector, Params, RoundAggregator, ServerMessage};

fn sid(c: ClientId) -> flotilla_secagg::ClientId {
    flotilla_secagg::ClientId(c.0)
}

/// Hands `msg` from `c` to the aggregator as a driver would: the masked input as words, anything
/// else encoded.
fn give(sa: &mut RoundAggregator, c: ClientId, msg: ClientMessage) {
    let stage = msg.stage().index().expect("a client-visible stage");
    let bytes = msg.to_bytes();
    let input = match msg {
        ClientMessage::MaskedInput(m) => StageInput::Masked(m.masked),
        _ => StageInput::Message(&bytes),
    };
    sa.receive(c, stage, input).expect("accepted");
}

/// Runs a whole round through `SecAggRound` with real secagg clients, one of which vanishes after
/// its masked input, and inspects the server-side state after every step: it never holds an
/// individual (unmasked or masked) vector — only the running masked sum, then the aggregate.
#[test]
fn coordinator_state_never_holds_an_individual_update() {
    let n = 6usize;
    let len = 16usize;
    let params = Params::recommended(n, len, 1.0).unwrap();
    let mut sa = RoundAggregator::new(params);
    let ids: Vec<ClientId> = (10..10 + n as u64).map(ClientId).collect();
    sa.start(1, 1, 42);
    let rid = flotilla_secagg::round_id(1, 1);
    let mut clients: BTreeMap<ClientId, Client> = ids
        .iter()
        .map(|&c| (c, Client::new(params, sid(c), rid, [c.0 as u8; 32])))
        .collect();
    let updates: BTreeMap<ClientId, Vec<f32>> = ids
        .iter()
        .map(|&c| {
            (
                c,
                (0..len)
                    .map(|i| ((c.0 as f32) * 0.01 + i as f32 * 0.02) - 0.2)
                    .collect(),
            )
        })
        .collect();
    for (&c, cl) in &clients {
        give(&mut sa, c, ClientMessage::AdvertiseKeys(cl.advertise()));
    }
    assert!(sa.held_vectors().is_empty());
    let p = sa.close_stage(0, &ids).unwrap();
    for (&c, cl) in clients.iter_mut() {
        let ServerMessage::Roster(r) = ServerMessage::from_bytes(&p[&c], &params).unwrap() else {
            panic!()
        };
        let m = cl.handle_roster(&r).unwrap();
        give(&mut sa, c, ClientMessage::ShareKeys(m));
    }
    let p = sa.close_stage(1, &ids).unwrap();
    let mut encoded_inputs = Vec::new();
    for (i, (&c, cl)) in clients.iter_mut().enumerate() {
        let ServerMessage::Shares(b) = ServerMessage::from_bytes(&p[&c], &params).unwrap() else {
            panic!()
        };
        cl.handle_shares(&b).unwrap();
        let m = cl.masked_input(&updates[&c]).unwrap();
        encoded_inputs.push(params.encode_all(&updates[&c]));
        give(&mut sa, c, ClientMessage::MaskedInput(m));
        let held = sa.held_vectors();
        assert_eq!(held.len(), 1, "only the running sum");
        let HeldVector::MaskedSum { inputs, data } = held[0] else {
            panic!("{held:?}")
        };
        assert_eq!(inputs, i + 1);
        for e in &encoded_inputs {
            assert_ne!(data, e.as_slice(), "the server holds an unmasked input");
        }
    }
    // The last client vanishes after its masked input; the others answer the unmasking request.
    let survivors: Vec<ClientId> = ids[..n - 1].to_vec();
    let p = sa.close_stage(2, &ids).unwrap();
    for &c in &survivors {
        let ServerMessage::UnmaskRequest(r) = ServerMessage::from_bytes(&p[&c], &params).unwrap()
        else {
            panic!()
        };
        let m = clients.get_mut(&c).unwrap().handle_unmask(&r).unwrap();
        give(&mut sa, c, ClientMessage::Unmask(m));
        assert!(matches!(
            sa.held_vectors()[..],
            [HeldVector::MaskedSum { .. }]
        ));
    }
    let sum = sa.finish(&ids).expect("finish");
    assert_eq!(sum.len(), len);
    let bound = params.quantization_error_bound(n);
    for (j, s) in sum.iter().enumerate() {
        let exact: f64 = updates.values().map(|u| f64::from(u[j])).sum();
        assert!((s - exact).abs() <= bound + 1e-6, "{j}: {s} vs {exact}");
    }
    assert!(
        matches!(sa.held_vectors()[..], [HeldVector::Aggregate(_)]),
        "{:?}",
        sa.held_vectors()
    );
}

/// Distributed DP: each client clips and noises its delta before masking. Nothing the server
/// holds at any step is a client's noise-free (clipped) update or its noised one; the unmasked
/// aggregate is the sum of the *noised* inputs, far from the noise-free sum.
#[test]
fn under_distributed_dp_the_server_never_holds_a_noise_free_update() {
    use rand_core::SeedableRng;
    let n = 5usize;
    let len = 64usize;
    let (clip, std) = (1.0, 0.5);
    let params = Params::recommended(n, len, clip + 10.0 * std).unwrap();
    let mut sa = RoundAggregator::new(params);
    let ids: Vec<ClientId> = (20..20 + n as u64).map(ClientId).collect();
    sa.start(1, 1, 7);
    let rid = flotilla_secagg::round_id(1, 1);
    let mut clients: BTreeMap<ClientId, Client> = ids
        .iter()
        .map(|&c| (c, Client::new(params, sid(c), rid, [c.0 as u8; 32])))
        .collect();
    let mut clean: BTreeMap<ClientId, Vec<f32>> = BTreeMap::new();
    let mut noised: BTreeMap<ClientId, Vec<f32>> = BTreeMap::new();
    for &c in &ids {
        let mut d: Vec<f32> = (0..len)
            .map(|i| (c.0 as f32 - 20.0) * 0.3 + i as f32 * 0.01)
            .collect();
        flotilla_core::dp::clip_delta(&mut d, clip);
        let mut z = d.clone();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(c.0);
        flotilla_core::dp::clip_and_add_noise(&mut z, clip, std, &mut rng);
        clean.insert(c, d);
        noised.insert(c, z);
    }
    for (&c, cl) in &clients {
        give(&mut sa, c, ClientMessage::AdvertiseKeys(cl.advertise()));
    }
    let p = sa.close_stage(0, &ids).unwrap();
    for (&c, cl) in clients.iter_mut() {
        let ServerMessage::Roster(r) = ServerMessage::from_bytes(&p[&c], &params).unwrap() else {
            panic!()
        };
        let m = cl.handle_roster(&r).unwrap();
        give(&mut sa, c, ClientMessage::ShareKeys(m));
    }
    let p = sa.close_stage(1, &ids).unwrap();
    let encoded: Vec<Vec<u32>> = clean
        .values()
        .chain(noised.values())
        .map(|v| params.encode_all(v))
        .collect();
    for (&c, cl) in clients.iter_mut() {
        let ServerMessage::Shares(b) = ServerMessage::from_bytes(&p[&c], &params).unwrap() else {
            panic!()
        };
        cl.handle_shares(&b).unwrap();
        let m = cl.masked_input(&noised[&c]).unwrap();
        give(&mut sa, c, ClientMessage::MaskedInput(m));
        for held in sa.held_vectors() {
            let HeldVector::MaskedSum { data, .. } = held else {
                panic!("{held:?}")
            };
            assert!(
                encoded.iter().all(|e| data != e.as_slice()),
                "the server holds an individual update"
            );
        }
    }
    let p = sa.close_stage(2, &ids).unwrap();
    for (&c, cl) in clients.iter_mut() {
        let ServerMessage::UnmaskRequest(r) = ServerMessage::from_bytes(&p[&c], &params).unwrap()
        else {
            panic!()
        };
        let m = cl.handle_unmask(&r).unwrap();
        give(&mut sa, c, ClientMessage::Unmask(m));
    }
    let sum = sa.finish(&ids).expect("finish");
    assert_eq!(sum.len(), len);
    let bound = params.quantization_error_bound(n) + 1e-6;
    let mut far = 0;
    for (j, s) in sum.iter().enumerate() {
        let with_noise: f64 = noised.values().map(|u| f64::from(u[j])).sum();
        let without: f64 = clean.values().map(|u| f64::from(u[j])).sum();
        assert!((s - with_noise).abs() <= bound, "{j}: {s} vs {with_noise}");
        far += usize::from((s - without).abs() > 0.1);
    }
    // The total noise per coordinate has std 0.5·√5 ≈ 1.1: almost every coordinate is off by > 0.1.
    assert!(far > len * 3 / 4, "{far} of {len}");
}

#[test]
fn a_stage_close_below_threshold_is_an_explicit_failure() {
    let params = Params::new(5, 4, 4, 4, 1.0).unwrap();
    let mut sa = RoundAggregator::new(params);
    sa.start(1, 1, 1);
    let rid = flotilla_secagg::round_id(1, 1);
    // Only 3 of the needed t + 1 = 5 clients advertise.
    for c in 0..3u64 {
        let cl = Client::new(params, flotilla_secagg::ClientId(c), rid, [c as u8 + 1; 32]);
        give(
            &mut sa,
            ClientId(c),
            ClientMessage::AdvertiseKeys(cl.advertise()),
        );
    }
    let ids: Vec<ClientId> = (0..3).map(ClientId).collect();
    let reason = sa.close_stage(0, &ids).expect_err("too few clients");
    assert!(reason.contains("at least 5"), "{reason}");
    // The failed round says so on every later call, never silently going on.
    assert!(sa.finish(&ids).is_err());
    // A new attempt starts a fresh server.
    sa.start(1, 2, 1);
    assert!(sa.held_vectors().is_empty());
}

/// Messages of another stage, another sender or too large are refused by a stable code, changing
/// nothing; before any round starts, every message is refused.
#[test]
fn refusals_name_their_cause() {
    let params = Params::recommended(4, 8, 1.0).unwrap();
    let mut sa = RoundAggregator::new(params);
    let rid = flotilla_secagg::round_id(1, 1);
    let cl = Client::new(params, sid(ClientId(1)), rid, [1; 32]);
    let adv = ClientMessage::AdvertiseKeys(cl.advertise()).to_bytes();
    let code = |r: Result<(), StageRefusal>| r.expect_err("refused").code;
    assert_eq!(
        code(sa.receive(ClientId(1), 0, StageInput::Message(&adv))),
        "secagg_no_state"
    );
    sa.start(1, 1, 9);
    assert_eq!(
        code(sa.receive(ClientId(1), 1, StageInput::Message(&adv))),
        "secagg_wrong_stage"
    );
    assert_eq!(
        code(sa.receive(ClientId(2), 0, StageInput::Message(&adv))),
        "secagg_sender_mismatch"
    );
    let big = vec![0u8; params.max_client_message_len() + 1];
    assert_eq!(
        code(sa.receive(ClientId(1), 0, StageInput::Message(&big))),
        "secagg_too_large"
    );
    assert_eq!(
        code(sa.receive(ClientId(1), 0, StageInput::Message(&[1, 2, 3]))),
        "secagg_malformed"
    );
    sa.receive(ClientId(1), 0, StageInput::Message(&adv))
        .expect("accepted");
    let dup = code(sa.receive(ClientId(1), 0, StageInput::Message(&adv)));
    assert_eq!(dup, "secagg_duplicate");
}
