//! The little dense linear algebra the latent Gaussian needs: Cholesky factorisation of a small
//! symmetric positive-definite matrix (latent x latent) and triangular products and solves.

use anyhow::{Result, bail, ensure};

/// The lower-triangular factor `L` of a symmetric positive-definite matrix `A = L Lᵀ`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cholesky {
    n: usize,
    /// Row-major n x n; the upper triangle is zero.
    lower: Vec<f64>,
}

impl Cholesky {
    /// Factorises the row-major `n x n` matrix `a` (only its lower triangle is read).
    pub(crate) fn new(a: &[f64], n: usize) -> Result<Self> {
        ensure!(
            a.len() == n * n,
            "a {n}x{n} matrix needs {} values, not {}",
            n * n,
            a.len()
        );
        let mut lower = vec![0.0; n * n];
        for j in 0..n {
            let row_j = j * n;
            let pivot = a[row_j + j] - dot(&lower[row_j..row_j + j], &lower[row_j..row_j + j]);
            if !(pivot > 0.0 && pivot.is_finite()) {
                bail!("the matrix is not positive definite (pivot {j} is {pivot})");
            }
            let diagonal = pivot.sqrt();
            lower[row_j + j] = diagonal;
            for i in j + 1..n {
                let row_i = i * n;
                let s = a[row_i + j] - dot(&lower[row_i..row_i + j], &lower[row_j..row_j + j]);
                lower[row_i + j] = s / diagonal;
            }
        }
        Ok(Self { n, lower })
    }

    /// `L`, row-major.
    #[cfg(test)]
    pub(crate) fn lower(&self) -> &[f64] {
        &self.lower
    }

    /// `L z`.
    pub(crate) fn mul(&self, z: &[f64]) -> Vec<f64> {
        assert_eq!(z.len(), self.n, "vector length must match the matrix");
        (0..self.n)
            .map(|i| dot(&self.lower[i * self.n..i * self.n + i + 1], &z[..=i]))
            .collect()
    }

    /// The `y` with `L y = b` (forward substitution).
    pub(crate) fn solve_lower(&self, b: &[f64]) -> Vec<f64> {
        assert_eq!(b.len(), self.n, "vector length must match the matrix");
        let mut y = vec![0.0; self.n];
        for i in 0..self.n {
            let row = &self.lower[i * self.n..i * self.n + i];
            y[i] = (b[i] - dot(row, &y[..i])) / self.lower[i * self.n + i];
        }
        y
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::Cholesky;

    #[test]
    fn factor_reproduces_the_matrix_and_solves() {
        // A = L Lᵀ for L = [[2,0,0],[1,3,0],[-1,2,1]].
        let a = [4.0, 2.0, -2.0, 2.0, 10.0, 5.0, -2.0, 5.0, 6.0];
        let chol = Cholesky::new(&a, 3).unwrap();
        assert_eq!(
            chol.lower(),
            &[2.0, 0.0, 0.0, 1.0, 3.0, 0.0, -1.0, 2.0, 1.0]
        );
        let z = [1.0, -2.0, 0.5];
        let lz = chol.mul(&z);
        assert_eq!(lz, vec![2.0, -5.0, -4.5]);
        assert_eq!(chol.solve_lower(&lz), z.to_vec());
    }

    #[test]
    fn indefinite_and_misshapen_matrices_are_refused() {
        assert!(Cholesky::new(&[1.0, 2.0, 2.0, 1.0], 2).is_err());
        assert!(Cholesky::new(&[0.0], 1).is_err());
        assert!(Cholesky::new(&[f64::NAN], 1).is_err());
        assert!(Cholesky::new(&[1.0, 0.0, 0.0], 2).is_err());
    }

    #[test]
    fn documented_example_of_the_factorisation() {
        let l = Cholesky::new(&[4.0, 2.0, 2.0, 5.0], 2).unwrap();
        assert_eq!(l.lower(), &[2.0, 0.0, 1.0, 2.0]);
    }
}
