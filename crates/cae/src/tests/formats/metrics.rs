//! SSIM against values known in closed form and against an independent NumPy implementation.

use crate::eval::metrics::{mean_ssim, ssim};

/// The deterministic test pair of `reference_ssim.py` (below): a smooth pattern and a noisy,
/// clipped copy, built in float64 and stored as float32 exactly as NumPy does.
fn pair(channels: usize, height: usize, width: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for c in 0..channels {
        for y in 0..height {
            for x in 0..width {
                let (cf, yf, xf) = (c as f64, y as f64, x as f64);
                let base = ((0.37 * xf + 0.71 * yf + cf).sin() + 1.0) / 2.0;
                let noisy = base + 0.15 * (1.3 * xf * (y % 5) as f64 + 0.5 * cf).cos();
                a.push(base as f32);
                b.push(noisy.clamp(0.0, 1.0) as f32);
            }
        }
    }
    (a, b)
}

// Values printed by this NumPy script (numpy 2.4), which filters with the full 2-D window
// through `sliding_window_view` instead of the separable passes of `crate::eval::metrics`:
//
//   def window():
//       r = np.arange(11) - 5
//       g = np.exp(-(r[:, None]**2 + r[None, :]**2) / (2 * 1.5**2)); return g / g.sum()
//   def ssim_plane(x, y):
//       f = lambda img: np.einsum('ijkl,kl->ij', sliding_window_view(img, (11, 11)), window())
//       C1, C2 = 0.01**2, 0.03**2
//       mx, my = f(x), f(y)
//       sxx, syy, sxy = f(x*x) - mx*mx, f(y*y) - my*my, f(x*y) - mx*my
//       return (((2*mx*my + C1) * (2*sxy + C2)) / ((mx*mx + my*my + C1) * (sxx + syy + C2))).mean()
//   def images(c, h, w):
//       cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing='ij')
//       a = (np.sin(0.37*xx + 0.71*yy + cc) + 1) / 2
//       b = np.clip(a + 0.15*np.cos(1.3*xx*(yy % 5) + 0.5*cc), 0, 1)
//       return a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
//   a, b = images(c, h, w); np.mean([ssim_plane(a[k], b[k]) for k in range(c)])
const NUMPY_3X32X32: f64 = 0.9478081536627846;
const NUMPY_1X28X28: f64 = 0.942309916713307;
const NUMPY_3X11X11: f64 = 0.9487202106126066;

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "SSIM {actual} but the NumPy reference says {expected}"
    );
}

#[test]
fn identical_images_have_ssim_one() {
    let (a, _) = pair(3, 32, 32);
    assert_close(ssim(&a, &a, 3, 32, 32).unwrap(), 1.0);
}

#[test]
fn matches_an_independent_numpy_implementation() {
    for (shape, expected) in [
        ((3, 32, 32), NUMPY_3X32X32),
        ((1, 28, 28), NUMPY_1X28X28),
        ((3, 11, 11), NUMPY_3X11X11),
    ] {
        let (c, h, w) = shape;
        let (a, b) = pair(c, h, w);
        assert_close(ssim(&a, &b, c, h, w).unwrap(), expected);
        assert_close(ssim(&b, &a, c, h, w).unwrap(), expected);
    }
}

#[test]
fn constant_images_follow_the_luminance_term() {
    // No variance anywhere: the structure term is C2 / C2 = 1 and SSIM is
    // (2 m n + C1) / (m^2 + n^2 + C1) with C1 = 0.01^2.
    let (m, n) = (0.25f32, 0.75f32);
    let a = vec![m; 3 * 16 * 16];
    let b = vec![n; 3 * 16 * 16];
    let (m, n, c1) = (f64::from(m), f64::from(n), 1e-4);
    let expected = (2.0 * m * n + c1) / (m * m + n * n + c1);
    assert_close(ssim(&a, &b, 3, 16, 16).unwrap(), expected);
}

#[test]
fn batch_ssim_is_the_mean_over_images() {
    let (a, b) = pair(3, 32, 32);
    let first: Vec<f32> = [a.clone(), a.clone()].concat();
    let second: Vec<f32> = [b, a].concat();
    assert_close(
        mean_ssim(&first, &second, 3, 32, 32).unwrap(),
        (NUMPY_3X32X32 + 1.0) / 2.0,
    );
}

#[test]
fn worse_copies_score_lower() {
    let (a, _) = pair(3, 32, 32);
    let noisy = |amount: f32| -> Vec<f32> {
        a.iter()
            .enumerate()
            .map(|(i, v)| (v + amount * ((i * 7919 % 13) as f32 / 6.0 - 1.0)).clamp(0.0, 1.0))
            .collect()
    };
    let slight = ssim(&a, &noisy(0.02), 3, 32, 32).unwrap();
    let strong = ssim(&a, &noisy(0.2), 3, 32, 32).unwrap();
    assert!(1.0 > slight && slight > strong, "{slight} vs {strong}");
}

#[test]
fn rejects_images_smaller_than_the_window_and_bad_lengths() {
    let small = vec![0.5; 10 * 10];
    let err = ssim(&small, &small, 1, 10, 10).unwrap_err().to_string();
    assert!(err.contains("11x11"), "{err}");
    let (a, b) = pair(1, 16, 16);
    assert!(ssim(&a, &b[1..], 1, 16, 16).is_err());
    assert!(mean_ssim(&[], &[], 1, 16, 16).is_err());
    assert!(
        ssim(
            &[a.clone(), a].concat(),
            &[b.clone(), b].concat(),
            1,
            16,
            16
        )
        .is_err()
    );
}
