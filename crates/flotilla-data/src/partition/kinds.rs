//! The list-making partitioners: IID, Dirichlet label skew, shards, natural groups, quantity skew.
//! Each deals every sample to exactly one client from one seeded RNG stream.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use rand_distr::multi::Dirichlet;

use super::DIRICHLET_MAX_TRIES;
use crate::error::PartitionError;

/// Deals `items` into `k` contiguous near-equal chunks (first ones larger).
fn deal(items: &[u32], k: usize) -> Vec<Vec<u32>> {
    let n = items.len();
    (0..k)
        .map(|i| items[i * n / k..(i + 1) * n / k].to_vec())
        .collect()
}

pub(super) fn iid(n: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(rng);
    deal(&idx, k)
}

/// One Dirichlet(alpha·1_k) draw, normalised; `None` if it came out degenerate.
fn draw_proportions(
    dist: Option<&Dirichlet<f64>>,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Vec<f64>> {
    let Some(dist) = dist else {
        return Some(vec![1.0]); // k == 1
    };
    let p: Vec<f64> = dist.sample(rng);
    let sum: f64 = p.iter().sum();
    if p.len() != k
        || !sum.is_finite()
        || sum <= 0.0
        || p.iter().any(|v| !v.is_finite() || *v < 0.0)
    {
        return None;
    }
    Some(p.into_iter().map(|v| v / sum).collect())
}

fn make_dirichlet(alpha: f64, k: usize) -> Result<Option<Dirichlet<f64>>, PartitionError> {
    if k < 2 {
        return Ok(None);
    }
    Dirichlet::new(&vec![alpha; k])
        .map(Some)
        .map_err(|_| PartitionError::InvalidAlpha { alpha })
}

pub(super) fn dirichlet(
    labels: &[u32],
    num_classes: usize,
    k: usize,
    alpha: f64,
    min_samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    let dist = make_dirichlet(alpha, k)?;
    let mut by_class = crate::dataset::indices_by_class(labels, num_classes);
    by_class.retain(|c| !c.is_empty());
    for _ in 0..DIRICHLET_MAX_TRIES {
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); k];
        let mut degenerate = false;
        for class in &by_class {
            let mut idx = class.clone();
            idx.shuffle(rng);
            let Some(p) = draw_proportions(dist.as_ref(), k, rng) else {
                degenerate = true;
                break;
            };
            // cuts = floor(cumsum(p) * len) for the first k-1 clients.
            let len = idx.len();
            let mut cum = 0.0;
            let mut start = 0usize;
            for (client, part) in parts.iter_mut().enumerate() {
                let end = if client + 1 == k {
                    len
                } else {
                    cum += p[client];
                    ((cum * len as f64) as usize).clamp(start, len)
                };
                part.extend_from_slice(&idx[start..end]);
                start = end;
            }
        }
        if !degenerate && parts.iter().all(|p| p.len() >= min_samples) {
            return Ok(parts);
        }
    }
    Err(PartitionError::DirichletGaveUp {
        tries: DIRICHLET_MAX_TRIES,
        min_samples,
        num_clients: k,
        alpha,
    })
}

pub(super) fn shards(
    labels: &[u32],
    num_classes: usize,
    k: usize,
    classes_per_client: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    if classes_per_client == 0 || classes_per_client > num_classes {
        return Err(PartitionError::InvalidClassesPerClient {
            classes_per_client,
            num_classes,
        });
    }
    let n = labels.len();
    let num_shards = k.saturating_mul(classes_per_client);
    if num_shards > n {
        return Err(PartitionError::TooManyShards {
            shards: num_shards,
            num_samples: n,
        });
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(rng);
    idx.sort_by_key(|&i| labels[i as usize]); // stable: random order within a class
    let shard_list = deal(&idx, num_shards);
    let mut order: Vec<usize> = (0..num_shards).collect();
    order.shuffle(rng);
    Ok(order
        .chunks(classes_per_client)
        .map(|chunk| {
            chunk
                .iter()
                .flat_map(|&s| shard_list[s].iter().copied())
                .collect()
        })
        .collect())
}

pub(super) fn natural(
    labels: &[u32],
    groups: Option<&[u32]>,
    k: usize,
    min_samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    let groups = groups.ok_or(PartitionError::GroupsRequired)?;
    if groups.len() != labels.len() {
        return Err(PartitionError::GroupsLengthMismatch {
            groups: groups.len(),
            labels: labels.len(),
        });
    }
    let mut members: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i as u32);
    }
    let mut eligible: Vec<u32> = members
        .iter()
        .filter(|(_, m)| m.len() >= min_samples.max(1))
        .map(|(&g, _)| g)
        .collect();
    if k > eligible.len() {
        return Err(PartitionError::NotEnoughGroups {
            requested: k,
            available: eligible.len(),
            min_samples,
        });
    }
    if k < eligible.len() {
        eligible.shuffle(rng);
        eligible.truncate(k);
        eligible.sort_unstable();
    }
    Ok(eligible
        .iter()
        .map(|g| members.remove(g).unwrap_or_default())
        .collect())
}

pub(super) fn quantity_skew(
    n: usize,
    k: usize,
    alpha: f64,
    min_samples: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>, PartitionError> {
    let dist = make_dirichlet(alpha, k)?;
    let mut p = None;
    for _ in 0..DIRICHLET_MAX_TRIES {
        p = draw_proportions(dist.as_ref(), k, rng);
        if p.is_some() {
            break;
        }
    }
    let p = p.ok_or(PartitionError::DirichletGaveUp {
        tries: DIRICHLET_MAX_TRIES,
        min_samples,
        num_clients: k,
        alpha,
    })?;
    let rest = n - min_samples * k;
    let mut sizes: Vec<usize> = Vec::with_capacity(k);
    let mut rems: Vec<(f64, usize)> = Vec::with_capacity(k);
    for (i, &pi) in p.iter().enumerate() {
        let exact = pi * rest as f64;
        let fl = exact.floor() as usize;
        sizes.push(fl);
        rems.push((exact - fl as f64, i));
    }
    let assigned: usize = sizes.iter().sum();
    let left = rest.saturating_sub(assigned);
    rems.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().cycle().take(left) {
        sizes[i] += 1;
    }
    // Float rounding could overshoot by a few; take from the largest.
    let mut total: usize = sizes.iter().sum();
    while total > rest {
        if let Some(max) = sizes.iter_mut().max() {
            *max -= 1;
        }
        total -= 1;
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(rng);
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for s in sizes {
        let end = start + s + min_samples;
        out.push(idx[start..end].to_vec());
        start = end;
    }
    // Leftover from rounding (should not happen) goes to the last client.
    if let Some(last) = out.last_mut() {
        last.extend_from_slice(&idx[start..]);
    }
    Ok(out)
}
