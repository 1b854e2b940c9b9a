//! End-to-end rounds, dropouts, threshold failures and the server's state.

use crate::common;

use std::collections::BTreeMap;

use common::{Drop, Round, assert_close, clipped_sum, update_for};
use flotilla_secagg::{ClientId, HeldVector, Params, RoundError, Stage};

fn id(i: u64) -> ClientId {
    ClientId(100 + 3 * i)
}

#[test]
fn full_round_without_dropouts_sums_exactly_within_bound() {
    let params = Params::recommended(12, 257, 1.0).unwrap();
    let round = Round::new(params, 7, 12, BTreeMap::new());
    let expected = clipped_sum(round.contributors(), 257, 1.0);
    let (agg, server) = round.run();
    let agg = agg.unwrap();
    assert_eq!(agg.contributors.len(), 12);
    assert_close(&agg, &expected);
    assert_eq!(server.stage(), Stage::Finished);
}

#[test]
fn dropouts_at_every_stage_are_recovered() {
    let params = Params::new(20, 6, 10, 100, 2.0).unwrap();
    let drops = BTreeMap::from([
        (id(0), Drop::BeforeAdvertise),
        (id(3), Drop::BeforeShareKeys),
        (id(7), Drop::BeforeMaskedInput),
        (id(12), Drop::BeforeMaskedInput),
        (id(15), Drop::BeforeUnmasking),
        (id(18), Drop::BeforeUnmasking),
    ]);
    let round = Round::new(params, 1, 20, drops);
    let contributors = round.contributors();
    assert_eq!(contributors.len(), 16);
    let expected = clipped_sum(contributors.clone(), 100, 2.0);
    let (agg, _) = round.run();
    let agg = agg.unwrap();
    assert_eq!(
        agg.contributors.iter().map(|c| c.0).collect::<Vec<_>>(),
        contributors.into_iter().collect::<Vec<_>>()
    );
    assert_close(&agg, &expected);
}

#[test]
fn neighbourhood_below_threshold_is_an_explicit_error() {
    // Complete graph over 5 clients (k = 4), t = 3: three dropouts before masking leave every
    // survivor's seed with too few holders.
    let params = Params::new(5, 3, 4, 10, 1.0).unwrap();
    let drops = BTreeMap::from([
        (id(0), Drop::BeforeMaskedInput),
        (id(1), Drop::BeforeMaskedInput),
        (id(2), Drop::BeforeMaskedInput),
    ]);
    let (res, server) = Round::new(params, 1, 5, drops).run();
    assert!(
        matches!(
            res,
            Err(RoundError::TooFewClients {
                stage: Stage::MaskedInput,
                available: 2,
                required: 3
            })
        ),
        "{res:?}"
    );
    assert_eq!(server.stage(), Stage::Failed);
    assert!(
        server.held_vectors().is_empty(),
        "a failed round drops the masked sum"
    );

    // Survivors enough overall, but too many of them vanish before unmasking.
    let params = Params::new(8, 4, 6, 10, 1.0).unwrap();
    let drops = BTreeMap::from([
        (id(0), Drop::BeforeUnmasking),
        (id(1), Drop::BeforeUnmasking),
        (id(2), Drop::BeforeUnmasking),
    ]);
    let (res, _) = Round::new(params, 1, 8, drops).run();
    match res {
        Err(RoundError::BelowThreshold {
            stage: Stage::Unmasking,
            available,
            threshold: 4,
            ..
        }) => assert!(available < 4),
        other => panic!("expected BelowThreshold at unmasking, got {other:?}"),
    }

    // Too few clients advertise at all.
    let drops = (0..6).map(|i| (id(i), Drop::BeforeAdvertise)).collect();
    let (res, _) = Round::new(params, 1, 8, drops).run();
    assert!(
        matches!(
            res,
            Err(RoundError::TooFewClients {
                stage: Stage::AdvertiseKeys,
                ..
            })
        ),
        "{res:?}"
    );

    // A failed server stays failed.
    let (_, mut server) = Round::new(
        params,
        1,
        8,
        (0..6).map(|i| (id(i), Drop::BeforeAdvertise)).collect(),
    )
    .run();
    assert!(server.close_share_keys().is_err());
    assert!(server.finish().is_err());
}

#[test]
fn server_never_holds_an_individual_unmasked_update() {
    let params = Params::new(10, 3, 4, 64, 1.0).unwrap();
    let mut r = Round::new(
        params,
        3,
        10,
        BTreeMap::from([(id(9), Drop::BeforeMaskedInput)]),
    );
    let encoded: BTreeMap<ClientId, Vec<u32>> = r
        .clients
        .keys()
        .map(|&c| {
            (
                c,
                update_for(c.0, 64, 1.0)
                    .iter()
                    .map(|&x| params.encode(x))
                    .collect(),
            )
        })
        .collect();
    let plain_sum: Vec<u32> = (0..64)
        .map(|i| {
            encoded
                .values()
                .take(9)
                .fold(0u32, |a, v| a.wrapping_add(v[i]))
        })
        .collect();
    let check = |server: &flotilla_secagg::Server| {
        for held in server.held_vectors() {
            match held {
                HeldVector::MaskedSum { data, .. } => {
                    for v in encoded.values() {
                        let same = data.iter().zip(v).filter(|(a, b)| a == b).count();
                        assert!(
                            same < 4,
                            "masked sum matches an individual encoding in {same} coordinates"
                        );
                    }
                    assert_ne!(data, &plain_sum[..]);
                }
                HeldVector::Aggregate(_) => panic!("aggregate before finish"),
            }
        }
    };
    r.advertise();
    assert!(r.server.held_vectors().is_empty());
    let m = r.share_keys().unwrap();
    r.send_all(&m);
    let masked = r.masked_inputs().unwrap();
    for (k, (&c, b)) in masked.iter().enumerate() {
        r.server.receive(c, b).unwrap();
        let held = r.server.held_vectors();
        assert_eq!(held.len(), 1, "only the running masked sum is held");
        assert!(matches!(held[0], HeldVector::MaskedSum { inputs, .. } if inputs == k + 1));
        check(&r.server);
    }
    let m = r.unmask().unwrap();
    r.send_all(&m);
    check(&r.server);
    let agg = r.server.finish().unwrap();
    let held = r.server.held_vectors();
    assert_eq!(held.len(), 1, "after finish only the aggregate is held");
    assert!(matches!(held[0], HeldVector::Aggregate(a) if a == &agg.sum[..]));
}

#[test]
fn rounds_are_deterministic_given_seeds() {
    let params = Params::new(9, 3, 4, 33, 1.0).unwrap();
    let a = Round::new(
        params,
        2,
        9,
        BTreeMap::from([(id(4), Drop::BeforeMaskedInput)]),
    )
    .run()
    .0
    .unwrap();
    let b = Round::new(
        params,
        2,
        9,
        BTreeMap::from([(id(4), Drop::BeforeMaskedInput)]),
    )
    .run()
    .0
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn parallel_unmasking_matches_single_threaded() {
    let params = Params::new(9, 4, 6, 20_000, 1.0).unwrap();
    let drops = BTreeMap::from([
        (id(4), Drop::BeforeMaskedInput),
        (id(5), Drop::BeforeUnmasking),
    ]);
    let a = Round::new(params, 2, 9, drops.clone()).run().0.unwrap();
    let mut r = Round::new(params, 2, 9, drops);
    r.server.set_threads(3);
    let b = r.run().0.unwrap();
    assert_eq!(a, b);
}
