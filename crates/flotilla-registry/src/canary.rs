//! Which clients a canary rollout serves.

use sha2::{Digest, Sha256};

/// Whether client `client_id` is in the `percent`% canary share of model `model`.
///
/// Stable (the same client, model and percentage always give the same answer; raising the
/// percentage only adds clients) and even: the model name's hash sets an offset `o`, and client
/// `i` takes the point `frac(o + i·φ⁻¹)` of a golden-ratio (Weyl) sequence, in the canary when it
/// falls below `percent/100`. Consecutive ids — how the coordinator numbers clients — spread
/// evenly, so any run of n ids holds `percent`% of them within a few clients, unlike a plain
/// hash's binomial scatter; different models get different shares.
pub fn in_canary(client_id: u64, model: &str, percent: u8) -> bool {
    if percent == 0 {
        return false;
    }
    if percent >= 100 {
        return true;
    }
    let digest = Sha256::digest(model.as_bytes());
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&digest[..8]);
    // 2^64 / φ, the 64-bit Fibonacci hashing constant.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let point = u64::from_le_bytes(offset).wrapping_add(client_id.wrapping_mul(GOLDEN));
    // point / 2^64 < percent / 100, exactly in integers.
    u128::from(point) * 100 < u128::from(percent) << 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_tenth_of_200_consecutive_clients_is_about_20() {
        for model in ["digits", "fraud-v2", "x"] {
            let n = (1..=200).filter(|&i| in_canary(i, model, 10)).count();
            assert!((17..=23).contains(&n), "{model}: {n}");
        }
        assert!(!(1..=1000).any(|i| in_canary(i, "digits", 0)));
        assert!((1..=1000).all(|i| in_canary(i, "digits", 100)));
    }

    proptest! {
        /// Raising the percentage never removes a client from the canary.
        #[test]
        fn monotone(id in any::<u64>(), p in 0u8..100, model in "[a-z]{1,8}") {
            if in_canary(id, &model, p) {
                prop_assert!(in_canary(id, &model, p + 1));
            }
        }

        /// Any window of 100 consecutive ids holds p% of them within 3.
        #[test]
        fn even(start in 0u64..1_000_000_000, p in 1u8..100, model in "[a-z]{1,8}") {
            let n = (start..start + 100).filter(|&i| in_canary(i, &model, p)).count() as i64;
            prop_assert!((n - i64::from(p)).abs() <= 3, "{} of 100 at {}%", n, p);
        }
    }
}
