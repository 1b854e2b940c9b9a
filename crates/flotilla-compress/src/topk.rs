//! Top-k sparsification: which coordinates to send and their (index, value) encoding.

/// Entries sent for `fraction` of `dim` coordinates: `⌈fraction·dim⌉`, at least 1 (for `dim > 0`)
/// and at most `dim`.
pub(crate) fn k_for(fraction: f64, dim: usize) -> usize {
    if dim == 0 {
        return 0;
    }
    ((fraction * dim as f64).ceil() as usize).clamp(1, dim)
}

/// The indices of the `k` coordinates of largest magnitude, ascending. Ties go to the lower index,
/// so the choice is a function of the values alone.
pub(crate) fn select(values: &[f32], k: usize) -> Vec<u32> {
    // MAX_DIM < 2^32, checked by the caller.
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            let (va, vb) = (values[a as usize].abs(), values[b as usize].abs());
            vb.total_cmp(&va).then(a.cmp(&b))
        });
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// Appends `k` and the (index, value) pairs of `chosen` (ascending) from `values`.
pub(crate) fn write(values: &[f32], chosen: &[u32], out: &mut Vec<u8>) {
    out.extend_from_slice(&(chosen.len() as u32).to_le_bytes());
    out.reserve(chosen.len() * 8);
    for &i in chosen {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&values[i as usize].to_le_bytes());
    }
}
