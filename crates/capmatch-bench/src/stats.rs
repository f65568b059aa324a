//! The timing statistics of a row: medians, the speed ratio from interleaved pairs of rounds,
//! and whether the ratio and the two throughputs of the summary tell the same story.

/// The `p` quantile (0..=1) of already sorted values, by the nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Median of `v` (the mean of the two middle values for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Speed ratio from interleaved rounds: round `i` of ours and round `i` of the reference ran
/// back to back (a pair), so each pair saw about the same machine; the ratio is the median
/// over pairs of reference time ÷ our time. Rounds without a partner (one side failed
/// mid-case) are left out. None without a complete pair.
pub fn paired_ratio(ours: &[f64], reference: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = ours.iter().zip(reference).filter(|(o, _)| **o > 0.0).map(|(o, r)| r / o).collect();
    (!ratios.is_empty()).then(|| median(&ratios))
}

/// Reference time ÷ our time from each side's median round: the ratio the two throughput
/// columns of the summary imply.
pub fn ratio_of_medians(ours: &[f64], reference: &[f64]) -> Option<f64> {
    let (o, r) = (median(ours), median(reference));
    (o > 0.0 && r.is_finite()).then(|| r / o)
}

/// How far the paired ratio may stray from the ratio of the medians before the summary says
/// so: the two are different statistics of the same rounds and agree within noise when the
/// machine is steady.
pub const RATIO_TOLERANCE: f64 = 0.03;

/// None when the paired ratio and the ratio of the throughputs agree within
/// [`RATIO_TOLERANCE`]; else the latter, for the summary to show beside the former.
pub fn throughput_ratio_if_different(ours: &[f64], reference: &[f64]) -> Option<f64> {
    let paired = paired_ratio(ours, reference)?;
    let of_medians = ratio_of_medians(ours, reference)?;
    ((of_medians / paired - 1.0).abs() > RATIO_TOLERANCE).then_some(of_medians)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_takes_the_nearest_rank() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn median_of_odd_even_unsorted_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        // An outlier moves the mean, not the median.
        assert_eq!(median(&[1.0, 1.1, 0.9, 100.0, 1.0]), 1.0);
    }

    #[test]
    fn paired_ratio_divides_partners_not_medians() {
        // The machine slows down over the case: each pair sees the same state, so every pair
        // says 2×, while the medians of the two sides would say something else.
        let ours = [1.0, 2.0, 4.0];
        let reference = [2.0, 4.0, 8.0];
        assert_eq!(paired_ratio(&ours, &reference), Some(2.0));
        // Unpaired rounds are ignored: ours has one more round than the reference.
        assert_eq!(paired_ratio(&[1.0, 1.0, 5.0], &[3.0, 3.0]), Some(3.0));
        assert_eq!(paired_ratio(&[1.0, 2.0], &[]), None);
        // The median over pairs, not the mean: one disturbed pair does not move it.
        assert_eq!(paired_ratio(&[1.0, 1.0, 1.0], &[2.0, 2.0, 9.0]), Some(2.0));
        // Pairs (2×, 1×, 4×) say 2×; the medians of the sides (2 and 2) would say 1×.
        assert_eq!(paired_ratio(&[1.0, 2.0, 4.0], &[2.0, 2.0, 16.0]), Some(2.0));
        assert_eq!(ratio_of_medians(&[1.0, 2.0, 4.0], &[2.0, 2.0, 16.0]), Some(1.0));
    }

    #[test]
    fn ratio_of_medians_is_what_the_throughputs_say() {
        assert_eq!(ratio_of_medians(&[1.0, 3.0, 2.0], &[5.0, 4.0, 6.0]), Some(2.5));
        assert_eq!(ratio_of_medians(&[], &[1.0]), None);
    }

    #[test]
    fn summary_flags_a_paired_ratio_the_throughputs_do_not_support() {
        // Steady machine: both statistics agree, nothing to say.
        assert_eq!(throughput_ratio_if_different(&[1.0, 1.01, 0.99], &[2.0, 2.02, 1.98]), None);
        // Pairs say 2× in every round, but the reference's rounds fell in faster moments
        // overall, so its median throughput is only 1.5× ours: the summary shows both.
        let ours = [1.0, 1.0, 2.0, 2.0, 2.0];
        let reference = [2.0, 2.0, 4.0, 3.0, 3.0];
        let shown = throughput_ratio_if_different(&ours, &reference).expect("they differ");
        assert!((shown - 1.5).abs() < 1e-12, "{shown}");
        assert_eq!(paired_ratio(&ours, &reference), Some(2.0));
    }
}
