//! Fréchet distance between Gaussian fits of two feature sets, and the kernel (KID)
//! alternative, in f64.
use crate::error::{Error, Result};

/// Mean and covariance of a feature set (`n` rows of `d`).
#[derive(Clone, Debug)]
pub struct FeatureStats {
    pub n: usize,
    pub d: usize,
    pub mean: Vec<f64>,
    /// Row-major d x d, unbiased (divided by n - 1).
    pub cov: Vec<f64>,
}

impl FeatureStats {
    pub fn from_rows(rows: &[f32], d: usize) -> Result<Self> {
        if d == 0 || !rows.len().is_multiple_of(d) || rows.len() / d < 2 {
            return Err(Error::invalid(format!(
                "feature statistics need at least 2 rows of {d} values, got {} values",
                rows.len()
            )));
        }
        let n = rows.len() / d;
        let mut mean = vec![0.0; d];
        for r in rows.chunks(d) {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += *x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0; d * d];
        let mut c = vec![0.0; d];
        for r in rows.chunks(d) {
            for (ci, (x, m)) in c.iter_mut().zip(r.iter().zip(&mean)) {
                *ci = *x as f64 - m;
            }
            for i in 0..d {
                let ci = c[i];
                let row = &mut cov[i * d..(i + 1) * d];
                for (v, cj) in row.iter_mut().zip(&c) {
                    *v += ci * cj;
                }
            }
        }
        cov.iter_mut().for_each(|v| *v /= (n - 1) as f64);
        Ok(Self { n, d, mean, cov })
    }
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major) of a symmetric matrix, by cyclic
/// Jacobi rotations: exact to rounding for the ~100-dimensional matrices here, in well under
/// a second.
fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let scale: f64 = (0..d).map(|i| a[i * d + i] * a[i * d + i]).sum::<f64>() + 1e-300;
        if off <= 1e-26 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.d != b.d {
        return Err(Error::invalid(format!(
            "feature sets of dimension {} and {}",
            a.d, b.d
        )));
    }
    let d = a.d;
    let dm: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    // S1^1/2 = V diag(sqrt(l)) V^T.
    let (l, v) = sym_eigen(&a.cov, d);
    let mut half = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            half[i * d + j] = (0..d)
                .map(|k| v[i * d + k] * l[k].max(0.0).sqrt() * v[j * d + k])
                .sum();
        }
    }
    let m = matmul(&matmul(&half, &b.cov, d), &half, d);
    let (lm, _) = sym_eigen(&m, d);
    let tr_sqrt: f64 = lm.iter().map(|x| x.max(0.0).sqrt()).sum();
    let tr = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    Ok((dm + tr(&a.cov) + tr(&b.cov) - 2.0 * tr_sqrt).max(0.0))
}

/// Divide feature rows by the root-mean-square value of `reference` (in place), so scores
/// are in units of the reference's feature scale and the KID kernel sees x.y / d ~ 1.
pub fn normalize(rows: &mut [f32], reference_rms: f64) {
    let s = (1.0 / reference_rms) as f32;
    rows.iter_mut().for_each(|v| *v *= s);
}

/// Root-mean-square of all values.
pub fn rms(rows: &[f32]) -> f64 {
    (rows.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / rows.len().max(1) as f64).sqrt()
}

/// Unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 between
/// two equal-size feature sets (`rows` of `d`).
pub fn kernel_inception_distance(x: &[f32], y: &[f32], d: usize) -> Result<f64> {
    let (n, m) = (x.len() / d, y.len() / d);
    if n < 2 || m < 2 {
        return Err(Error::invalid("KID needs at least 2 samples on each side"));
    }
    let k = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum();
        (dot / d as f64 + 1.0).powi(3)
    };
    let within = |s: &[f32], n: usize| {
        let mut t = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                t += k(&s[i * d..(i + 1) * d], &s[j * d..(j + 1) * d]);
            }
        }
        2.0 * t / (n * (n - 1)) as f64
    };
    let mut cross = 0.0;
    for i in 0..n {
        for j in 0..m {
            cross += k(&x[i * d..(i + 1) * d], &y[j * d..(j + 1) * d]);
        }
    }
    Ok(within(x, n) + within(y, m) - 2.0 * cross / (n * m) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(mean: &[f64], cov_diag: &[f64]) -> FeatureStats {
        let d = mean.len();
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            cov[i * d + i] = cov_diag[i];
        }
        FeatureStats {
            n: 100,
            d,
            mean: mean.to_vec(),
            cov,
        }
    }

    #[test]
    fn frechet_matches_closed_forms() {
        // Diagonal Gaussians: |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2.
        let a = stats_of(&[0.0, 1.0, 2.0], &[1.0, 4.0, 9.0]);
        let b = stats_of(&[1.0, 1.0, 0.0], &[4.0, 4.0, 1.0]);
        let want = 1.0 + 4.0 + (1.0f64 - 2.0).powi(2) + 0.0 + (3.0f64 - 1.0).powi(2);
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-9);
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        // A rotated, correlated covariance against itself: 0.
        let rows: Vec<f32> = (0..400)
            .flat_map(|i| {
                let u = ((i * 37) % 101) as f32 / 50.0 - 1.0;
                let w = ((i * 53) % 97) as f32 / 48.0 - 1.0;
                [u, u + 0.5 * w, w]
            })
            .collect();
        let s = FeatureStats::from_rows(&rows, 3).unwrap();
        assert!(frechet_distance(&s, &s).unwrap() < 1e-9);
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution() {
        let x: Vec<f32> = (0..200)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let y: Vec<f32> = (0..200)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let same = kernel_inception_distance(&x, &y, 2).unwrap();
        let shifted: Vec<f32> = y.iter().map(|v| v + 1.0).collect();
        let far = kernel_inception_distance(&x, &shifted, 2).unwrap();
        assert!(same.abs() < 0.05 && far > 1.0, "{same} {far}");
    }
}
