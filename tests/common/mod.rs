//! Helpers shared by the integration tests. Golden data lives in tests/data (copied from
//! diffusers' outputs in ../shared/golden), so the repo stands alone.
#![allow(dead_code)]
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// `tests/data/NAME`. `DIFFUSE_REPO` names the checkout at run time, for a test executable
/// carried to another machine (scripts/gpu-check.sh); else the one it was built from.
pub fn data_path(name: &str) -> PathBuf {
    std::env::var_os("DIFFUSE_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests")
        .join("data")
        .join(name)
}

pub fn load_golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data_path(name), &Device::Cpu).expect("golden file")
}

/// Max absolute difference between two tensors of equal shape, computed in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a: Vec<f64> = a
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f64> = b
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// schedule name -> (betas, alpha_bars)
pub type GoldenSchedules = HashMap<String, (Vec<f64>, Vec<f64>)>;

/// Rows of a golden schedule CSV, plus the `#` header lines.
pub fn read_schedule_csv(name: &str) -> (GoldenSchedules, Vec<String>) {
    let text = std::fs::read_to_string(data_path(name)).unwrap();
    let mut out = GoldenSchedules::new();
    let mut header = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            header.push(line.to_string());
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f[0] == "schedule" {
            continue;
        }
        let e = out.entry(f[0].to_string()).or_default();
        assert_eq!(f[1].parse::<usize>().unwrap(), e.0.len(), "rows in order");
        e.0.push(f[2].parse().unwrap());
        e.1.push(f[3].parse().unwrap());
    }
    (out, header)
}

/// Place `filename` in a hub cache (`hub` = $HF_HOME/hub) as hf-hub lays it out: a blob, a
/// snapshot symlink to it, and `refs/<git_ref>` naming the snapshot.
pub fn hub_cache_file(
    hub: &std::path::Path,
    repo_folder: &str,
    git_ref: &str,
    commit: &str,
    filename: &str,
    write: impl FnOnce(&std::path::Path),
) {
    let repo = hub.join(repo_folder);
    let blob = repo
        .join("blobs")
        .join(format!("etag-{}", filename.replace('/', "-")));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    write(&blob);
    let snap = repo.join("snapshots").join(commit).join(filename);
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&blob, &snap).unwrap();
    let r = repo.join("refs").join(git_ref);
    std::fs::create_dir_all(r.parent().unwrap()).unwrap();
    std::fs::write(r, commit).unwrap();
}

/// Check a failed run: asserts a non-zero exit and exactly one stderr line (no panic), and
/// returns (exit code, stderr).
/// The loss column of a training run's loss.csv, one value per logged row.
pub fn losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

pub fn one_line_failure(out: std::process::Output, what: &str) -> (i32, String) {
    assert!(!out.status.success(), "{what} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: one line expected, got {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code().unwrap(), err)
}

/// Every file and folder below `dir` with its bytes ("<dir>" for folders): to assert that a
/// failed command created, changed or removed nothing. Empty when `dir` does not exist.
pub fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut m = std::collections::BTreeMap::new();
    if !dir.exists() {
        return m;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                m.insert(p, b"<dir>".to_vec());
            } else {
                m.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    m
}

/// The exact denoiser for x0 ~ N(m, 0.25) per pixel, in f64 from the f32 input, with
/// a = sqrt(abar_t) from diffusers' float32 table, as the golden's generator computes it.
pub fn analytic_model(
    m: Vec<f32>,
    abar: Vec<f64>,
    prediction: diffuse::sampler::PredictionType,
) -> impl FnMut(&Tensor, &Tensor) -> diffuse::Result<Tensor> {
    move |x: &Tensor, t: &Tensor| {
        let ts: Vec<u32> = t.to_dtype(candle_core::DType::U32)?.to_vec1()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let per = xs.len() / ts.len();
        let s2 = 0.25f64;
        let out: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &xi)| {
                let ab = abar[ts[i / per] as usize];
                let (a, sig) = (ab.sqrt(), (1.0 - ab).sqrt());
                let xi = xi as f64;
                let mi = m[i % m.len()] as f64;
                let eps = sig * (xi - a * mi) / (a * a * s2 + sig * sig);
                use diffuse::sampler::PredictionType;
                (match prediction {
                    PredictionType::Epsilon => eps,
                    PredictionType::VPrediction => {
                        let x0 = (xi - sig * eps) / a;
                        a * eps - sig * x0
                    }
                    PredictionType::Sample => (xi - sig * eps) / a,
                }) as f32
            })
            .collect();
        Ok(Tensor::from_vec(out, x.shape(), x.device())?)
    }
}

pub fn chain_config(
    kind: diffuse::sampler::SamplerKind,
    sched: &str,
    pred: diffuse::sampler::PredictionType,
    spacing: diffuse::sampler::TimestepSpacing,
    steps: usize,
) -> diffuse::sampler::SamplerConfig {
    use diffuse::sampler::{SamplerConfig, SchedulerConfig};
    SamplerConfig {
        kind,
        steps,
        eta: 0.0,
        karras: false,
        scheduler: SchedulerConfig {
            class_name: kind.diffusers_class().into(),
            beta_schedule: sched.into(),
            clip_sample: false,
            prediction_type: pred,
            timestep_spacing: Some(spacing),
            ..SchedulerConfig::default()
        },
    }
}

/// diffusers' float32 alpha_bar table of a schedule (tests/data/schedules.csv).
pub fn diffusers_alpha_bar(name: &str) -> Vec<f64> {
    read_schedule_csv("schedules.csv").0[name].1.clone()
}

/// Metadata of a safetensors file (the golden files keep `configs`, `keys` there).
pub fn golden_metadata(name: &str) -> HashMap<String, String> {
    let bytes = std::fs::read(data_path(name)).expect("golden file");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    meta.metadata().clone().unwrap_or_default()
}

/// The second golden set's analytic denoiser, called like a UNet on the scheduler's scaled
/// input and (possibly fractional) timestep: sigma(t) interpolated in the f64 sigma table of
/// diffusers' f32 alpha_bar `ab`, abar = 1 / (1 + sigma^2), then eps / v / x0 of data
/// N(m, 0.25) (golden README). `means` holds one pattern per batch row (or one for all).
pub fn sigma_model(
    means: Vec<Vec<f32>>,
    ab: Vec<f32>,
    prediction: diffuse::sampler::PredictionType,
) -> impl FnMut(&Tensor, &Tensor) -> diffuse::Result<Tensor> {
    let tab: Vec<f64> = ab
        .iter()
        .map(|a| {
            let a = *a as f64;
            ((1.0 - a) / a).sqrt()
        })
        .collect();
    move |x: &Tensor, t: &Tensor| {
        let ts: Vec<f64> = t.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let per = xs.len() / ts.len();
        let out: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &xi)| {
                let row = i / per;
                let tt = ts[row];
                let n = tab.len();
                let sigma = if tt >= (n - 1) as f64 {
                    tab[n - 1]
                } else if tt <= 0.0 {
                    tab[0]
                } else {
                    let j = tt.floor() as usize;
                    tab[j] + (tt - j as f64) * (tab[j + 1] - tab[j])
                };
                let ab = 1.0 / (1.0 + sigma * sigma);
                let (a, g) = (ab.sqrt(), (1.0 - ab).sqrt());
                let m = &means[row % means.len()];
                let mi = m[i % per % m.len()] as f64;
                let xi = xi as f64;
                let eps = g * (xi - a * mi) / (a * a * 0.25 + g * g);
                let x0 = (xi - g * eps) / a;
                use diffuse::sampler::PredictionType;
                (match prediction {
                    PredictionType::Epsilon => eps,
                    PredictionType::VPrediction => a * eps - g * x0,
                    PredictionType::Sample => x0,
                }) as f32
            })
            .collect();
        Ok(Tensor::from_vec(out, x.shape(), x.device())?)
    }
}
