//! Sums in a fixed order: over the batch (rayon's reductions would combine in work-stealing
//! order) and over positions per channel.

/// Sum of `values (batch, channels, positions)` over batch and positions, per channel.
pub(crate) fn channel_sums(values: &[f32], batch: usize, channels: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; channels];
    if batch == 0 || channels == 0 {
        return sums;
    }
    let positions = values.len() / (batch * channels);
    for item in values.chunks(channels * positions) {
        for (sum, row) in sums.iter_mut().zip(item.chunks(positions)) {
            *sum += lane_sum(row);
        }
    }
    sums
}

/// The element-wise sum of `partials` (each `len` long), added in their order: rayon's own
/// reductions combine in an order that depends on work stealing, which made training runs
/// differ in the last bits and broke `--resume`'s exact reproduction.
pub(crate) fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; len];
    for partial in partials {
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    sum
}

/// Sum of `values` in 16 interleaved partial sums, which the compiler keeps in one vector
/// register (a plain `iter().sum()` is sequential: bias gradients took 3% of a step).
pub(crate) fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, v)| *l += v);
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}
