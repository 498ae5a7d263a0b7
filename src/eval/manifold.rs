//! Precision and recall of a sample set against real data by k-NN manifolds (Kynkäänniemi et
//! al. 2019): each set's manifold is the union of balls around its points reaching their
//! k-th nearest neighbour; precision is the share of samples inside the real manifold
//! (quality), recall the share of real points inside the samples' manifold (coverage).
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The paper's k.
pub const K: usize = 3;

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Squared distance from each row to its k-th nearest other row.
fn radii(rows: &[f32], d: usize, k: usize) -> Vec<f32> {
    let n = rows.len() / d;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let a = &rows[i * d..(i + 1) * d];
            // The k smallest distances to others, kept sorted.
            let mut best = vec![f32::INFINITY; k];
            for j in (0..n).filter(|&j| j != i) {
                let v = dist2(a, &rows[j * d..(j + 1) * d]);
                if v < best[k - 1] {
                    best[k - 1] = v;
                    best.sort_by(f32::total_cmp);
                }
            }
            best[k - 1]
        })
        .collect()
}

/// Share of `query` rows inside the manifold of `support` (rows with their radii).
fn coverage(query: &[f32], support: &[f32], r: &[f32], d: usize) -> f64 {
    let n = query.len() / d;
    let inside = (0..n)
        .into_par_iter()
        .filter(|&i| {
            let q = &query[i * d..(i + 1) * d];
            r.iter()
                .enumerate()
                .any(|(j, rj)| dist2(q, &support[j * d..(j + 1) * d]) <= *rj)
        })
        .count();
    inside as f64 / n as f64
}

/// (precision, recall) of `fake` against `real`, feature rows of `d` floats each.
pub fn precision_recall(real: &[f32], fake: &[f32], d: usize, k: usize) -> Result<(f64, f64)> {
    let (n, m) = (real.len() / d, fake.len() / d);
    if d == 0 || !real.len().is_multiple_of(d) || !fake.len().is_multiple_of(d) || n <= k || m <= k
    {
        return Err(Error::invalid(format!(
            "precision/recall need more than k = {k} rows in each set (got {n} and {m})"
        )));
    }
    let (rr, rf) = (radii(real, d, k), radii(fake, d, k));
    Ok((coverage(fake, real, &rr, d), coverage(real, fake, &rf, d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(n: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut r = crate::core::rng::NoiseRng::new(seed);
        let t = r.randn((n, 4), &candle_core::Device::Cpu).unwrap();
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| x + shift)
            .collect()
    }

    #[test]
    fn a_set_against_itself_and_against_a_far_one() {
        let a = cloud(200, 0.0, 1);
        assert_eq!(precision_recall(&a, &a, 4, K).unwrap(), (1.0, 1.0));
        let far = cloud(200, 100.0, 2);
        assert_eq!(precision_recall(&a, &far, 4, K).unwrap(), (0.0, 0.0));
        // Two draws of one distribution: most of each inside the other.
        let (p, r) = precision_recall(&a, &cloud(200, 0.0, 3), 4, K).unwrap();
        assert!(p > 0.8 && r > 0.8, "{p} {r}");
        // Samples collapsed onto a small part of the data: precise, with poor recall.
        let collapsed: Vec<f32> = cloud(200, 0.0, 4).iter().map(|x| x * 0.1).collect();
        let (p, r) = precision_recall(&a, &collapsed, 4, K).unwrap();
        assert!(p > 0.9 && r < 0.5, "{p} {r}");
        assert!(precision_recall(&a, &a[..12], 4, K).is_err());
    }
}
