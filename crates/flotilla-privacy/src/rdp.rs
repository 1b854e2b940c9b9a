//! Rényi differential privacy of the Poisson-sampled Gaussian mechanism.
//!
//! Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"
//! (2019, arXiv:1908.10530). One step releases `sum(clipped updates of a Poisson sample with
//! rate q) + N(0, σ²C²)`; under the add/remove-one neighbouring relation its RDP at order α is
//! `ε(α) = log(A_α) / (α − 1)`, where `A_α = E_{z∼μ0}[(μ(z)/μ0(z))^α]`, `μ0 = N(0, σ²)` and
//! `μ = (1 − q)·μ0 + q·N(1, σ²)`.
//!
//! The computation follows Google's `dp-accounting` 0.6.0 (`dp_accounting.rdp`), which is the
//! reference our tests compare against:
//!
//! * **integer α** — the binomial expansion (§3.3 of the paper, Eq. for integer orders):
//!   `A_α = Σ_{i=0..α} C(α, i) (1−q)^{α−i} q^i exp((i² − i) / (2σ²))`, summed in log space;
//! * **fractional α** — the paper's two-sided series, split at `z0 = σ² ln(1/q − 1) + ½`:
//!   `A_α = Σ_i |C(α, i)| q^i (1−q)^{α−i} e^{(i²−i)/(2σ²)} ½ erfc((i − z0)/(√2σ))
//!        + Σ_i |C(α, i)| q^{α−i} (1−q)^i e^{((α−i)²−(α−i))/(2σ²)} ½ erfc((z0 − (α−i))/(√2σ))`,
//!   summed until both terms decrease and are 30 nats below the total, at most 1,000 terms; an
//!   order whose series does not settle is reported as `+∞` and so excluded from the ε
//!   minimisation (as the reference does);
//! * `q = 1` is the plain Gaussian mechanism, `ε(α) = α / (2σ²)`;
//! * RDP → (ε, δ): Proposition 12 of Canonne, Kamath and Steinke (arXiv:2004.00010),
//!   `ε = r(α) + ln(1 − 1/α) − ln(δ·α)/(α − 1)` for α > 1.01, with the KL shortcut
//!   `ε = 0` when `δ² + expm1(−r) > 0`, minimised over the orders (first minimum wins).
//!
//! `log|Γ|` is `libm::lgamma` (musl's, as accurate as SciPy's `gammaln`); `log erfc` is computed
//! like SciPy's `log_ndtr`: `ln erfcx(x) − x²` in the tail (`puruspe::erfcx`), `log1p` elsewhere.

use std::f64::consts::{FRAC_1_SQRT_2, LN_2, SQRT_2};
use std::sync::LazyLock;

/// Number of orders in [`DEFAULT_ORDERS`].
pub const DEFAULT_ORDER_COUNT: usize = 156;

/// The Rényi orders `dp-accounting`'s `RdpAccountant` uses by default:
/// `1.1, 1.2, …, 10.9` (`1 + x/10` for `x = 1..99`), then `11, 12, …, 63`, then
/// `128, 256, 512, 1024`. Orders that are whole numbers (2.0, 3.0, …) take the exact
/// integer-order formula.
pub const DEFAULT_ORDERS: [f64; DEFAULT_ORDER_COUNT] = default_orders();

const fn default_orders() -> [f64; DEFAULT_ORDER_COUNT] {
    let mut orders = [0.0; DEFAULT_ORDER_COUNT];
    let mut k = 0;
    let mut x = 1;
    while x < 100 {
        // Same expression as the reference, `1 + x / 10.0`, so the values are bit-identical.
        orders[k] = 1.0 + x as f64 / 10.0;
        k += 1;
        x += 1;
    }
    let mut a = 11;
    while a < 64 {
        orders[k] = a as f64;
        k += 1;
        a += 1;
    }
    let big = [128.0, 256.0, 512.0, 1024.0];
    let mut b = 0;
    while b < big.len() {
        orders[k] = big[b];
        k += 1;
        b += 1;
    }
    orders
}

/// Maximum number of series terms for a fractional order (the reference's
/// `_MAX_STEPS_LOG_A_FRAC`).
const MAX_STEPS_LOG_A_FRAC: u32 = 1000;

/// `log(exp(x) + exp(y))` without overflow.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `log |C(n, k)|` through `log |Γ|`; defined for fractional `n` too.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log Φ(a)`, the log of the standard normal CDF, accurate far into both tails.
fn log_ndtr(a: f64) -> f64 {
    let t = a * FRAC_1_SQRT_2;
    if a < -1.0 {
        (puruspe::erfcx(-t) / 2.0).ln() - t * t
    } else {
        (-libm::erfc(t) / 2.0).ln_1p()
    }
}

/// `log erfc(x)`, accurate for large `x` (where `erfc` itself underflows).
fn log_erfc(x: f64) -> f64 {
    LN_2 + log_ndtr(-x * SQRT_2)
}

/// `log A_α` for an integer order `alpha ≥ 2` and `0 < q < 1`.
fn log_a_int(q: f64, sigma: f64, alpha: u32) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let log1mq = (-q).ln_1p();
    let logq = q.ln();
    let two_sigma2 = 2.0 * (sigma * sigma);
    let n = f64::from(alpha);
    for i in 0..=alpha {
        let fi = f64::from(i);
        let log_coef_i = log_comb(n, fi) + fi * logq + f64::from(alpha - i) * log1mq;
        // i² − i is exact in u64 and in f64 for every order we use (≤ 1024).
        let s = log_coef_i + (u64::from(i) * u64::from(i) - u64::from(i)) as f64 / two_sigma2;
        log_a = log_add(log_a, s);
    }
    log_a
}

/// `log A_α` for a fractional order and `0 < q < 1`; `+∞` when the series does not settle
/// within [`MAX_STEPS_LOG_A_FRAC`] terms (the order is then ignored by the ε minimisation).
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let mut log_a0 = f64::NEG_INFINITY;
    let mut log_a1 = f64::NEG_INFINITY;
    let sigma2 = sigma * sigma;
    let two_sigma2 = 2.0 * sigma2;
    let z0 = sigma2 * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    let logq = q.ln();
    let sqrt2_sigma = SQRT_2 * sigma;
    let log_half = 0.5f64.ln();

    let mut last_s0 = f64::NEG_INFINITY;
    let mut last_s1 = f64::NEG_INFINITY;
    for step in 0..MAX_STEPS_LOG_A_FRAC {
        let i = f64::from(step);
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;

        let log_t0 = log_coef + i * logq + j * log1mq;
        let log_t1 = log_coef + j * logq + i * log1mq;

        let log_e0 = log_half + log_erfc((i - z0) / sqrt2_sigma);
        let log_e1 = log_half + log_erfc((z0 - j) / sqrt2_sigma);

        let i_sq = (u64::from(step) * u64::from(step) - u64::from(step)) as f64;
        let log_s0 = log_t0 + i_sq / two_sigma2 + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_sigma2 + log_e1;

        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);

        // Stop once both halves decrease and are negligible next to the total.
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// RDP at order `alpha` of one step of the Poisson-sampled Gaussian mechanism with sampling
/// rate `q ∈ [0, 1]` and noise multiplier `sigma > 0` (unchecked: validate first).
pub(crate) fn rdp_order(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * (sigma * sigma));
    }
    let log_a = if alpha.fract() == 0.0 && alpha <= f64::from(u32::MAX) {
        // Whole-number orders take the exact binomial expansion.
        log_a_int(q, sigma, alpha as u32)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// RDP of one step at every order of `orders` (unchecked parameters: validate first).
pub(crate) fn rdp_curve(q: f64, sigma: f64, orders: &[f64]) -> Vec<f64> {
    orders.iter().map(|&a| rdp_order(q, sigma, a)).collect()
}

/// Per-order constants of the RDP → (ε, δ) conversion: `ln(1 − 1/α)`, `ln α`, `α − 1`.
/// Precomputing them leaves every result bit-identical (the same operations in the same order)
/// and makes a conversion a few additions per order.
struct OrderConstants {
    log1m_inv: [f64; DEFAULT_ORDER_COUNT],
    ln: [f64; DEFAULT_ORDER_COUNT],
}

/// Pure constants derived from [`DEFAULT_ORDERS`], computed once.
static ORDER_CONSTANTS: LazyLock<OrderConstants> = LazyLock::new(|| OrderConstants {
    log1m_inv: DEFAULT_ORDERS.map(|a| (-1.0 / a).ln_1p()),
    ln: DEFAULT_ORDERS.map(f64::ln),
});

/// Smallest ε such that an RDP curve `rdp` over [`DEFAULT_ORDERS`] gives (ε, δ)-DP, and the
/// order that attains it. `delta` must be in (0, 1).
///
/// Non-finite RDP values (orders whose series did not converge, or `+∞` after a non-private
/// step) give `ε = +∞` at that order and so never win unless every order is infinite.
pub(crate) fn epsilon_from_rdp(rdp: &[f64], delta: f64) -> (f64, f64) {
    debug_assert_eq!(rdp.len(), DEFAULT_ORDER_COUNT);
    let c = &*ORDER_CONSTANTS;
    let log_delta = delta.ln();
    let delta_sq = delta * delta;
    let mut best_eps = f64::INFINITY;
    let mut best_order = DEFAULT_ORDERS[0];
    for (k, (&a, &r)) in DEFAULT_ORDERS.iter().zip(rdp).enumerate() {
        let eps = if r < 0.0 {
            // Only numerical noise can make RDP negative; the reference treats it as 0.
            0.0
        } else if kl_suffices(r, delta_sq) {
            // δ ≤ sqrt(1 − exp(−KL)) already: ε = 0 suffices.
            0.0
        } else if a > 1.01 {
            r + c.log1m_inv[k] - (log_delta + c.ln[k]) / (a - 1.0)
        } else {
            f64::INFINITY
        };
        // A NaN (only reachable from absurd inputs such as σ² overflowing) never wins; the
        // reference would return it.
        let eps = if eps.is_nan() { f64::INFINITY } else { eps };
        // np.argmin: the first minimum wins.
        if k == 0 || eps < best_eps {
            best_eps = eps;
            best_order = a;
        }
    }
    (best_eps.max(0.0), best_order)
}

/// The reference's `δ² + expm1(−r) > 0`, skipping `expm1` where the answer is certainly "no":
/// for `2δ² ≤ r ≤ 1`, `expm1(−r) ≤ −r/2 ≤ −δ²`, and for `r > 1`, `expm1(−r) < −0.63 < −δ²`
/// when `δ² ≤ 0.3` — margins no rounding can cross.
fn kl_suffices(r: f64, delta_sq: f64) -> bool {
    if r >= 2.0 * delta_sq && (r <= 1.0 || delta_sq <= 0.3) {
        return false;
    }
    delta_sq + (-r).exp_m1() > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_orders_match_the_reference_definition() {
        assert_eq!(DEFAULT_ORDERS.len(), 156);
        assert_eq!(DEFAULT_ORDERS[0], 1.1);
        assert_eq!(DEFAULT_ORDERS[98], 1.0 + 99.0 / 10.0);
        assert_eq!(DEFAULT_ORDERS[99], 11.0);
        assert_eq!(DEFAULT_ORDERS[151], 63.0);
        assert_eq!(&DEFAULT_ORDERS[152..], &[128.0, 256.0, 512.0, 1024.0]);
        assert!(DEFAULT_ORDERS.windows(2).all(|w| w[0] < w[1]));
        // 2.0, 3.0, …, 10.0 are whole numbers and so take the integer formula.
        assert_eq!(
            DEFAULT_ORDERS.iter().filter(|a| a.fract() == 0.0).count(),
            9 + 53 + 4
        );
    }

    #[test]
    fn log_erfc_is_accurate_in_both_tails() {
        // erfc(0) = 1; erfc(-∞) = 2; erfc(x) ~ exp(-x²)/(x√π) for large x.
        assert!((log_erfc(0.0)).abs() < 1e-15);
        assert!((log_erfc(-30.0) - LN_2).abs() < 1e-15);
        let x: f64 = 100.0;
        let asymptotic =
            -(x * x) - x.ln() - 0.5 * std::f64::consts::PI.ln() - 0.5 / (x * x) + 0.625 / x.powi(4);
        assert!((log_erfc(x) - asymptotic).abs() < 1e-9 * asymptotic.abs());
        assert!((log_erfc(1.0) - libm::erfc(1.0).ln()).abs() < 1e-15);
    }

    #[test]
    fn kl_shortcut_matches_the_reference_test() {
        for delta in [1e-7, 1e-5, 0.1, 0.5, 0.9, 0.999] {
            let d2: f64 = delta * delta;
            for r in [
                0.0,
                1e-300,
                d2 * 0.5,
                d2,
                d2 * 1.0000001,
                d2 * 2.0,
                1e-3,
                0.5,
                1.0,
                2.0,
                50.0,
            ] {
                assert_eq!(
                    kl_suffices(r, d2),
                    d2 + (-r).exp_m1() > 0.0,
                    "r {r} delta {delta}"
                );
            }
        }
    }

    #[test]
    fn full_sampling_is_the_gaussian_mechanism() {
        assert_eq!(rdp_order(1.0, 2.0, 3.0), 3.0 / 8.0);
        assert_eq!(rdp_order(0.0, 2.0, 3.0), 0.0);
    }

    #[test]
    fn integer_order_two_has_a_closed_form() {
        // A_2 = (1 − q)² + 2q(1 − q) + q² e^{1/σ²} = 1 + q²(e^{1/σ²} − 1).
        let (q, sigma) = (0.05, 1.3);
        let exact = (q * q * (1.0f64 / (sigma * sigma)).exp_m1()).ln_1p();
        assert!((rdp_order(q, sigma, 2.0) - exact).abs() < 1e-15);
    }

    #[test]
    fn fractional_orders_interpolate_integer_ones() {
        // RDP is non-decreasing in α; the fractional series must sit between its neighbours.
        let (q, sigma) = (0.01, 1.1);
        let lo = rdp_order(q, sigma, 3.0);
        let mid = rdp_order(q, sigma, 3.5);
        let hi = rdp_order(q, sigma, 4.0);
        assert!(lo <= mid && mid <= hi, "{lo} {mid} {hi}");
    }

    #[test]
    fn kl_shortcut_and_infinite_orders() {
        let n = DEFAULT_ORDER_COUNT;
        let (eps, order) = epsilon_from_rdp(&vec![0.0; n], 1e-5);
        assert_eq!((eps, order), (0.0, 1.1));
        let mut rdp = vec![f64::INFINITY; n];
        rdp[120] = 1.0;
        let (eps, order) = epsilon_from_rdp(&rdp, 1e-5);
        assert!(eps.is_finite());
        assert_eq!(order, DEFAULT_ORDERS[120]);
        let (eps, order) = epsilon_from_rdp(&vec![f64::INFINITY; n], 1e-5);
        assert_eq!((eps, order), (f64::INFINITY, 1.1));
    }
}
