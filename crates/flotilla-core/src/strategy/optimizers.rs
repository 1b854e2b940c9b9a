//! Server optimizers (Reddi et al. 2021): SGD (FedAvg), momentum (FedAvgM), Adagrad, Adam, Yogi.

use super::*;

impl Strategy {
    /// One server-optimizer step; updates `state` (moments) and returns the new global.
    pub(super) fn step(&self, state: &mut ServerState, global: &[f32], delta: &[f32]) -> Vec<f32> {
        let lr = self.spec.server_lr;
        let n = global.len();
        match self.spec.optimizer {
            ServerOptimizer::Sgd => global
                .iter()
                .zip(delta)
                .map(|(&x, &d)| (f64::from(x) + lr * f64::from(d)) as f32)
                .collect(),
            ServerOptimizer::Momentum { momentum } => {
                let v = state.m.get_or_insert_with(|| vec![0.0; n]);
                let mut out = Vec::with_capacity(n);
                for ((vi, &x), &d) in v.iter_mut().zip(global).zip(delta) {
                    let nv = momentum * f64::from(*vi) + f64::from(d);
                    *vi = nv as f32;
                    out.push((f64::from(x) + lr * nv) as f32);
                }
                out
            }
            ServerOptimizer::Adagrad { beta1, tau } => {
                self.adaptive(state, global, delta, beta1, tau, |v, d2| v + d2)
            }
            ServerOptimizer::Adam { beta1, beta2, tau } => {
                self.adaptive(state, global, delta, beta1, tau, |v, d2| {
                    beta2 * v + (1.0 - beta2) * d2
                })
            }
            ServerOptimizer::Yogi { beta1, beta2, tau } => {
                self.adaptive(state, global, delta, beta1, tau, |v, d2| {
                    v - (1.0 - beta2) * d2 * (v - d2).signum()
                })
            }
        }
    }

    fn adaptive(
        &self,
        state: &mut ServerState,
        global: &[f32],
        delta: &[f32],
        beta1: f64,
        tau: f64,
        second: impl Fn(f64, f64) -> f64,
    ) -> Vec<f32> {
        let n = global.len();
        let lr = self.spec.server_lr;
        let m = state.m.get_or_insert_with(|| vec![0.0; n]);
        // Reddi et al. initialise v ≥ τ²; starting at τ² keeps the first step bounded by η/2·|Δ|/τ.
        let v = state.v.get_or_insert_with(|| vec![(tau * tau) as f32; n]);
        let mut out = Vec::with_capacity(n);
        for (((mi, vi), &x), &d) in m.iter_mut().zip(v.iter_mut()).zip(global).zip(delta) {
            let d = f64::from(d);
            let nm = beta1 * f64::from(*mi) + (1.0 - beta1) * d;
            let nv = second(f64::from(*vi), d * d).max(0.0);
            *mi = nm as f32;
            *vi = nv as f32;
            out.push((f64::from(x) + lr * nm / (nv.sqrt() + tau)) as f32);
        }
        out
    }
}
