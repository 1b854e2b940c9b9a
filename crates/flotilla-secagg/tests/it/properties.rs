//! Property tests: for random n, t, k, vector lengths, clip ranges and dropout sets (before and after
//! masking), the unmasked sum equals the plain sum of the clipped updates within the documented
//! quantization bound; exactly when a neighbourhood falls below threshold, the round fails with an
//! explicit error at the predicted stage.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Drop, Round, assert_close, clipped_sum};
use flotilla_secagg::graph::Graph;
use flotilla_secagg::{ClientId, Params, RoundError, Stage};
use proptest::prelude::*;

fn id(i: u64) -> ClientId {
    ClientId(100 + 3 * i)
}

/// Independent prediction of where (if anywhere) the round must fail.
fn predicted_failure(
    p: &Params,
    n: u64,
    drops: &BTreeMap<ClientId, Drop>,
    seed: [u8; 32],
) -> Option<Stage> {
    let t = p.threshold();
    let past = |c: &ClientId, stage: Drop| drops.get(c).is_none_or(|d| (*d as u8) > (stage as u8));
    let all: Vec<ClientId> = (0..n).map(id).collect();
    let u1: Vec<ClientId> = all
        .iter()
        .copied()
        .filter(|c| past(c, Drop::BeforeAdvertise))
        .collect();
    if u1.len() < t + 1 {
        return Some(Stage::AdvertiseKeys);
    }
    let g = Graph::new(&u1, p.neighbours(), seed);
    let set =
        |s: Drop| -> BTreeSet<ClientId> { u1.iter().copied().filter(|c| past(c, s)).collect() };
    let (u2, u3, u5) = (
        set(Drop::BeforeShareKeys),
        set(Drop::BeforeMaskedInput),
        set(Drop::BeforeUnmasking),
    );
    let live = |u: ClientId, among: &BTreeSet<ClientId>| {
        g.neighbours(u).iter().filter(|v| among.contains(v)).count()
    };
    if u2.iter().any(|&u| live(u, &u2) < t) {
        return Some(Stage::ShareKeys);
    }
    if u3.len() < t {
        return Some(Stage::MaskedInput);
    }
    let at_stake: Vec<ClientId> = u2
        .iter()
        .copied()
        .filter(|&u| u3.contains(&u) || g.neighbours(u).iter().any(|v| u3.contains(v)))
        .collect();
    if at_stake.iter().any(|&u| live(u, &u3) < t) {
        return Some(Stage::MaskedInput);
    }
    if at_stake.iter().any(|&u| live(u, &u5) < t) {
        return Some(Stage::Unmasking);
    }
    None
}

fn setting() -> impl Strategy<Value = (Params, u64, Vec<Option<Drop>>)> {
    (
        3u64..=18,
        1usize..=48,
        prop_oneof![Just(0.5f64), Just(1.0), Just(7.25)],
        0.0f64..0.45,
    )
        .prop_flat_map(|(n, len, r, drop_rate)| {
            let n_us = n as usize;
            let max_k_even = (n_us - 1) & !1;
            let ks: Vec<usize> = (1..=max_k_even / 2)
                .map(|h| 2 * h)
                .chain(std::iter::once(n_us - 1))
                .collect();
            (
                Just((n, len, r)),
                proptest::sample::select(ks),
                proptest::collection::vec((0.0f64..1.0, 0u8..4), n_us),
                Just(drop_rate),
            )
        })
        .prop_flat_map(|((n, len, r), k, coins, rate)| {
            let lo = (k / 2 + 1).max(2);
            (Just((n, len, r, k, coins, rate)), lo..=k.max(lo))
        })
        .prop_filter_map("valid parameters", |((n, len, r, k, coins, rate), t)| {
            let p = Params::new(n as usize, t, k, len, r).ok()?;
            let drops = coins
                .into_iter()
                .map(|(c, s)| {
                    (c < rate).then_some(match s {
                        0 => Drop::BeforeAdvertise,
                        1 => Drop::BeforeShareKeys,
                        2 => Drop::BeforeMaskedInput,
                        _ => Drop::BeforeUnmasking,
                    })
                })
                .collect();
            Some((p, n, drops))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96), ..ProptestConfig::default() })]

    #[test]
    fn unmasked_sum_matches_plain_sum_or_fails_explicitly((params, n, drop_list) in setting(), round in 0u64..1000) {
        let drops: BTreeMap<ClientId, Drop> =
            drop_list.iter().enumerate().filter_map(|(i, d)| d.map(|d| (id(i as u64), d))).collect();
        let r = Round::new(params, round, n, drops.clone());
        let contributors = r.contributors();
        let predicted = predicted_failure(&params, n, &drops, [round as u8 ^ 0x3c; 32]);
        let (res, _) = r.run();
        match (res, predicted) {
            (Ok(agg), None) => {
                prop_assert_eq!(agg.contributors.iter().map(|c| c.0).collect::<BTreeSet<_>>(), contributors.clone());
                prop_assert!((agg.error_bound - params.quantization_error_bound(contributors.len())).abs() < 1e-15);
                assert_close(&agg, &clipped_sum(contributors, params.vector_len(), params.clip_range()));
            }
            (Err(e), Some(stage)) => {
                let got = match e {
                    RoundError::BelowThreshold { stage, .. } | RoundError::TooFewClients { stage, .. } => stage,
                    other => return Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
                };
                prop_assert_eq!(got, stage);
            }
            (res, predicted) => {
                return Err(TestCaseError::fail(format!("got {res:?}, predicted failure at {predicted:?}")));
            }
        }
    }
}
