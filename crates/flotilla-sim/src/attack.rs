//! Simulated attackers: which clients are malicious, how they poison their data, and how they
//! tamper with the update they report.
//!
//! Data poisoning (label flip, backdoor) changes what an attacker trains on; model poisoning (sign
//! flip, scaling, Gaussian noise) changes what it reports. Honest clients never see either.

use std::borrow::Cow;
use std::collections::BTreeSet;

use flotilla_data::Dataset;
use rand::seq::index;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::scenario::{AttackKind, AttackSettings, image_side};

/// The attackers of one simulation and what they need.
pub struct Attackers {
    /// The attack.
    pub settings: AttackSettings,
    /// Ids of the malicious clients.
    pub clients: BTreeSet<u64>,
    /// The training set as attackers see it (label flip / backdoor); `None` for model poisoning.
    pub poisoned_train: Option<Dataset>,
    /// Test samples not of the target class, triggered and labelled as the target (backdoor only).
    pub backdoor_test: Option<Dataset>,
    noise_rng: ChaCha8Rng,
}

/// Side length of the square trigger patch in the image's bottom-right corner.
const TRIGGER: usize = 3;

/// Writes the trigger into one feature row of a `side × side` image.
fn stamp(row: &mut [f32], side: usize, value: f32) {
    for r in side - TRIGGER..side {
        for c in side - TRIGGER..side {
            row[r * side + c] = value;
        }
    }
}

impl Attackers {
    /// Picks `round(fraction × clients)` attackers (at least one) of `num_clients` from `seed` and
    /// prepares their data; `client_samples(c)` gives client `c`'s training-set indices.
    ///
    /// Clients may share samples (`kind = "sampled"`): each sample is poisoned at most once (a
    /// second label flip would undo the first). With disjoint lists that changes nothing.
    pub fn new<'p>(
        settings: AttackSettings,
        seed: u64,
        train: &Dataset,
        test: &Dataset,
        num_clients: usize,
        client_samples: impl Fn(u64) -> Cow<'p, [u32]>,
    ) -> Self {
        let n = num_clients;
        let mut poisoned = vec![false; train.len()];
        let k = ((settings.fraction * n as f64).round() as usize).clamp(1, n);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00A7_7AC4);
        let clients: BTreeSet<u64> = index::sample(&mut rng, n, k)
            .into_iter()
            .map(|i| i as u64)
            .collect();
        let feature_len = train.feature_len();
        let (mut poisoned_train, mut backdoor_test) = (None, None);
        match settings.kind {
            AttackKind::LabelFlip => {
                let mut d = train.clone();
                let c = d.num_classes as u32;
                for &client in &clients {
                    for &i in client_samples(client).iter() {
                        if !std::mem::replace(&mut poisoned[i as usize], true) {
                            d.labels[i as usize] = c - 1 - d.labels[i as usize];
                        }
                    }
                }
                poisoned_train = Some(d);
            }
            AttackKind::Backdoor {
                target,
                poison_fraction,
            } => {
                // `parse_attack` admits backdoors only on square images.
                let side = image_side(&train.feature_shape).unwrap_or(0);
                let bright = train.features.iter().copied().fold(f32::MIN, f32::max);
                let mut d = train.clone();
                for &client in &clients {
                    for &i in client_samples(client).iter() {
                        if std::mem::replace(&mut poisoned[i as usize], true) {
                            continue;
                        }
                        if rng.random_bool(poison_fraction) {
                            let row = &mut d.features
                                [i as usize * feature_len..(i as usize + 1) * feature_len];
                            stamp(row, side, bright);
                            d.labels[i as usize] = target;
                        }
                    }
                }
                poisoned_train = Some(d);
                let mut t = Dataset {
                    features: Vec::new(),
                    labels: Vec::new(),
                    ..test.clone()
                };
                for (i, &label) in test.labels.iter().enumerate() {
                    if label != target {
                        let mut row =
                            test.features[i * feature_len..(i + 1) * feature_len].to_vec();
                        stamp(&mut row, side, bright);
                        t.features.extend_from_slice(&row);
                        t.labels.push(target);
                    }
                }
                t.groups = None;
                backdoor_test = Some(t);
            }
            _ => {}
        }
        Self {
            settings,
            clients,
            poisoned_train,
            backdoor_test,
            noise_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x2015E),
        }
    }

    /// Whether `client` is malicious.
    pub fn is_attacker(&self, client: u64) -> bool {
        self.clients.contains(&client)
    }

    /// Rewrites an attacker's trained parameters into what it reports. Called in cohort order, so
    /// the noise stream is deterministic.
    pub fn tamper(&mut self, global: &[f32], params: &mut [f32]) {
        match self.settings.kind {
            AttackKind::SignFlip { scale } => {
                for (p, g) in params.iter_mut().zip(global) {
                    *p = g - scale * (*p - g);
                }
            }
            AttackKind::Scaling { scale } => {
                for (p, g) in params.iter_mut().zip(global) {
                    *p = g + scale * (*p - g);
                }
            }
            AttackKind::GaussianNoise { sigma } => {
                // σ was validated finite and > 0 when the scenario was loaded.
                if let Ok(normal) = Normal::new(0.0f32, sigma) {
                    for (p, g) in params.iter_mut().zip(global) {
                        *p = g + normal.sample(&mut self.noise_rng);
                    }
                }
            }
            AttackKind::LabelFlip | AttackKind::Backdoor { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::AttackSettings;
    use flotilla_data::Partition;

    fn tiny() -> (Dataset, Partition) {
        let d = Dataset {
            features: (0..4 * 64).map(|i| (i % 7) as f32).collect(),
            feature_shape: vec![64],
            labels: vec![0, 1, 2, 3],
            num_classes: 4,
            groups: None,
            group_names: Vec::new(),
        };
        let p = Partition {
            clients: vec![vec![0, 1], vec![2, 3]],
        };
        (d, p)
    }

    #[test]
    fn label_flip_touches_only_attackers() {
        let (d, p) = tiny();
        let s = AttackSettings {
            kind: AttackKind::LabelFlip,
            fraction: 0.5,
        };
        let a = Attackers::new(s, 1, &d, &d, p.clients.len(), |c| {
            Cow::Borrowed(&p.clients[c as usize])
        });
        assert_eq!(a.clients.len(), 1);
        let bad = *a.clients.iter().next().unwrap() as usize;
        let poisoned = a.poisoned_train.as_ref().unwrap();
        for (c, idx) in p.clients.iter().enumerate() {
            for &i in idx {
                let flipped = poisoned.labels[i as usize] == 3 - d.labels[i as usize];
                assert_eq!(flipped, c == bad, "client {c} sample {i}");
            }
        }
    }

    #[test]
    fn backdoor_triggers_test_inputs_of_other_classes() {
        let (d, p) = tiny();
        let s = AttackSettings {
            kind: AttackKind::Backdoor {
                target: 1,
                poison_fraction: 1.0,
            },
            fraction: 0.5,
        };
        let a = Attackers::new(s, 1, &d, &d, p.clients.len(), |c| {
            Cow::Borrowed(&p.clients[c as usize])
        });
        let t = a.backdoor_test.as_ref().unwrap();
        assert_eq!(t.len(), 3, "samples of the target class are left out");
        assert!(t.labels.iter().all(|&l| l == 1));
        assert_eq!(
            t.features[63], 6.0,
            "bottom-right pixel carries the trigger (max value)"
        );
    }

    #[test]
    fn sign_flip_reverses_the_delta() {
        let (d, p) = tiny();
        let s = AttackSettings {
            kind: AttackKind::SignFlip { scale: 2.0 },
            fraction: 0.5,
        };
        let mut a = Attackers::new(s, 1, &d, &d, p.clients.len(), |c| {
            Cow::Borrowed(&p.clients[c as usize])
        });
        let mut params = vec![1.5, 0.0];
        a.tamper(&[1.0, 1.0], &mut params);
        assert_eq!(params, vec![0.0, 3.0]);
    }
}
