//! Separating anomalous from normal images by a score (higher means more anomalous): the ROC
//! AUC, and the threshold that keeps a chosen false-positive rate on normal data.

use anyhow::{Result, ensure};

/// Area under the ROC curve: the probability that a random anomalous image scores higher than a
/// random normal one, ties counting one half. Computed as the Mann–Whitney U statistic from
/// ranks, tied scores sharing their average rank.
pub(crate) fn roc_auc(normal: &[f64], anomalous: &[f64]) -> Result<f64> {
    ensure!(
        !normal.is_empty() && !anomalous.is_empty(),
        "the ROC AUC needs normal and anomalous images (got {} and {})",
        normal.len(),
        anomalous.len()
    );
    ensure!(
        normal.iter().chain(anomalous).all(|s| !s.is_nan()),
        "a score is NaN"
    );
    let mut scored: Vec<(f64, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(anomalous.iter().map(|&s| (s, true)))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut anomalous_rank_sum = 0.0;
    let mut start = 0;
    while start < scored.len() {
        let end = start + scored[start..].partition_point(|s| s.0 == scored[start].0);
        // Ranks start + 1 ..= end share their mean.
        let rank = (start + 1 + end) as f64 / 2.0;
        let tied_anomalous = scored[start..end].iter().filter(|s| s.1).count();
        anomalous_rank_sum += rank * tied_anomalous as f64;
        start = end;
    }
    let (n_a, n_n) = (anomalous.len() as f64, normal.len() as f64);
    let u = anomalous_rank_sum - n_a * (n_a + 1.0) / 2.0;
    Ok(u / (n_a * n_n))
}

/// A score threshold that flags (score > threshold) at most a fraction `fpr` of the `normal`
/// scores: halfway between the highest score it keeps and the lowest it flags, so that an image
/// whose score is recomputed (in another batch, its float sums in another order) does not cross
/// it. With nothing to flag it is the highest normal score.
pub(crate) fn threshold_at_fpr(normal: &[f64], fpr: f64) -> Result<f64> {
    ensure!(!normal.is_empty(), "a threshold needs normal scores");
    ensure!(
        (0.0..=1.0).contains(&fpr),
        "the false-positive rate must lie in [0, 1], not {fpr}"
    );
    ensure!(normal.iter().all(|s| !s.is_nan()), "a score is NaN");
    let mut sorted = normal.to_vec();
    sorted.sort_by(f64::total_cmp);
    let allowed = ((fpr * sorted.len() as f64).floor() as usize).min(sorted.len() - 1);
    let kept = sorted[sorted.len() - 1 - allowed];
    Ok(match allowed {
        0 => kept,
        _ => kept + (sorted[sorted.len() - allowed] - kept) / 2.0,
    })
}

#[cfg(test)]
mod tests {
    use super::{roc_auc, threshold_at_fpr};

    #[test]
    fn auc_matches_hand_counts() {
        // Pairs (anomalous > normal): 0.35 beats 0.1, 0.3; 0.8 beats all 3; 0.2 beats 0.1 => 6 of 9.
        let auc = roc_auc(&[0.1, 0.3, 0.5], &[0.35, 0.8, 0.2]).unwrap();
        assert!((auc - 6.0 / 9.0).abs() < 1e-12, "{auc}");
        // Perfectly inverted scores give 0.
        assert_eq!(roc_auc(&[3.0, 4.0], &[1.0, 2.0]).unwrap(), 0.0);
    }

    #[test]
    fn ties_count_one_half() {
        // Pairs: (1 vs 1) tie 0.5, (1 vs 2) loss 0, (2 vs 1) win 1, (2 vs 2) tie 0.5,
        // (3 vs 1) win, (3 vs 2) win => 4 of 6.
        let auc = roc_auc(&[1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((auc - 4.0 / 6.0).abs() < 1e-12, "{auc}");
        assert_eq!(roc_auc(&[7.0; 5], &[7.0; 3]).unwrap(), 0.5);
    }

    #[test]
    fn auc_equals_brute_force_pair_count() {
        let normal: Vec<f64> = (0..57).map(|i| ((i * 37) % 23) as f64 * 0.5).collect();
        let anomalous: Vec<f64> = (0..41).map(|i| ((i * 11) % 19) as f64 * 0.7).collect();
        let expected = crate::tests::fixtures::pairwise_auc(&normal, &anomalous);
        let auc = roc_auc(&normal, &anomalous).unwrap();
        assert!((auc - expected).abs() < 1e-12, "{auc} vs {expected}");
    }

    #[test]
    fn empty_or_nan_input_is_an_error() {
        assert!(roc_auc(&[], &[1.0]).is_err());
        assert!(roc_auc(&[1.0], &[]).is_err());
        assert!(roc_auc(&[f64::NAN], &[1.0]).is_err());
    }

    #[test]
    fn threshold_keeps_the_false_positive_rate() {
        let normal: Vec<f64> = (0..1000).map(|i| ((i * 7919) % 1000) as f64).collect();
        for fpr in [0.0, 0.01, 0.05, 0.1, 0.5] {
            let t = threshold_at_fpr(&normal, fpr).unwrap();
            let flagged = normal.iter().filter(|&&s| s > t).count() as f64 / 1000.0;
            assert!(
                flagged <= fpr && flagged > fpr - 0.002,
                "fpr {fpr}: {flagged}"
            );
        }
        assert_eq!(threshold_at_fpr(&[1.0, 2.0], 1.0).unwrap(), 1.5);
        assert!(threshold_at_fpr(&[1.0], 1.5).is_err());
    }

    #[test]
    fn documented_examples_of_roc_auc() {
        assert_eq!(roc_auc(&[0.1, 0.2], &[0.3, 0.4]).unwrap(), 1.0);
        assert_eq!(roc_auc(&[0.5], &[0.5]).unwrap(), 0.5);
    }

    #[test]
    fn documented_examples_of_threshold_at_fpr() {
        let normal: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(threshold_at_fpr(&normal, 0.05).unwrap(), 95.5);
        assert_eq!(threshold_at_fpr(&normal, 0.0).unwrap(), 100.0);
    }
}
