//! Standard normal draws from any `rand` generator (Box–Muller), since `rand_distr` is not a
//! dependency.

use rand::RngExt;

/// One draw from N(0, 1).
pub(crate) fn standard_normal<R: RngExt + ?Sized>(rng: &mut R) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    #[test]
    fn draws_have_mean_zero_and_variance_one() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| super::standard_normal(&mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        let beyond_2 = draws.iter().filter(|x| x.abs() > 2.0).count() as f64 / n as f64;
        assert!((beyond_2 - 0.0455).abs() < 0.003, "P(|x| > 2) = {beyond_2}");
    }
}
