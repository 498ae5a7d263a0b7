//! Samplers against diffusers: single DDIM/DDPM steps (ddim_step.safetensors) and whole
//! deterministic chains driven by an exact analytic denoiser (sampler_chains.safetensors).
mod common;
use candle_core::{DType, Device, Tensor};
use common::{load_golden, max_abs_diff};
use diffuse::core::rng::NoiseRng;
use diffuse::core::schedule::{BetaSchedule, Schedule};
use diffuse::sampler::ddim::{ddim_step, DdimParams};
use diffuse::sampler::ddpm::{ddpm_step, ddpm_variance, DdpmParams};
use diffuse::sampler::timesteps::ddim_timesteps;
use diffuse::sampler::{
    build, build_with_arithmetic, run, sample, PredictionType, SamplerConfig, SamplerKind,
    SigmaArithmetic, StepInfo, TimestepSpacing, VarianceType,
};
use diffuse::Result;

/// Tolerances: prev_sample and the DDPM mean at 1e-6 absolute; pred_original_sample at
/// 1e-6 after multiplying by sqrt(abar_t). diffusers forms x0 = (x - sqrt(1-abar) eps) /
/// sqrt(abar) in f32, so near t = 999 (sqrt(abar) = 0.0064) one f32 ulp of the numerator
/// becomes ~1e-5 in x0: any f32 implementation differs there by 1e-6 / sqrt(abar).
fn i64s(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as usize)
        .collect()
}

fn f32s(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

/// diffusers' float32 alphas_cumprod (schedules.csv), as f64.
#[test]
fn ddim_steps_match_diffusers() {
    let g = load_golden("ddim_step.safetensors");
    let (x, mo) = (&g["sample"], &g["model_output"]);
    let ours = Schedule::named(BetaSchedule::Linear, 1000).unwrap();
    for (variant, spacing, clip) in [
        ("ddim_leading", TimestepSpacing::Leading, None),
        ("ddim_trailing", TimestepSpacing::Trailing, None),
        ("ddim_leading_clip", TimestepSpacing::Leading, Some(1.0)),
    ] {
        let ts = ddim_timesteps(1000, 50, spacing, 0).unwrap();
        assert_eq!(ts, i64s(&g[&format!("{variant}_timesteps")]), "{variant}");
        let step_t = i64s(&g[&format!("{variant}_step_t")]);
        let step_prev: Vec<i64> = g[&format!("{variant}_step_prev_t")].to_vec1().unwrap();
        let ab_t = f32s(&g[&format!("{variant}_alpha_bar_t")]);
        let ab_prev = f32s(&g[&format!("{variant}_alpha_bar_prev")]);
        let p = DdimParams {
            prediction: PredictionType::Epsilon,
            eta: 0.0,
            clip,
        };
        for (k, idx) in [0usize, 25, 49].into_iter().enumerate() {
            let t = ts[idx];
            assert_eq!(step_t[k], t);
            assert_eq!(step_prev[k], t as i64 - 20, "prev_t = t - T // n");
            let want_prev = &g[&format!("{variant}_step{idx}_prev_sample")];
            let want_x0 = &g[&format!("{variant}_step{idx}_pred_original_sample")];
            // (1) The arithmetic, driven by diffusers' own alpha_bar values.
            let s = ddim_step(mo, x, ab_t[k], ab_prev[k], &p, None).unwrap();
            let a = ab_t[k].sqrt();
            let (dp, dx) = (
                max_abs_diff(&s.prev_sample, want_prev),
                a * max_abs_diff(&s.pred_original_sample, want_x0),
            );
            // (2) Our f64 tables; the gap to (1) is the table difference alone.
            let our_prev_ab = if step_prev[k] >= 0 {
                ours.alpha_bar[step_prev[k] as usize]
            } else {
                1.0
            };
            let (dab_t, dab_prev) = (
                (ours.alpha_bar[t] - ab_t[k]).abs(),
                (our_prev_ab - ab_prev[k]).abs(),
            );
            assert!(dab_t < 3.3e-7 && dab_prev < 3.3e-7, "alpha_bar tables");
            let s2 = ddim_step(mo, x, ours.alpha_bar[t], our_prev_ab, &p, None).unwrap();
            let (tp, tx) = (
                max_abs_diff(&s2.prev_sample, &s.prev_sample),
                a * max_abs_diff(&s2.pred_original_sample, &s.pred_original_sample),
            );
            let (ep, ex) = (
                max_abs_diff(&s2.prev_sample, want_prev),
                a * max_abs_diff(&s2.pred_original_sample, want_x0),
            );
            println!(
                "{variant} step {idx} (t {t}): diffusers alpha_bar: prev_sample {dp:.2e}, x0 {dx:.2e} \
                 (x0 unscaled {:.2e}) | our f64 tables: prev_sample {ep:.2e}, x0 {ex:.2e}; \
                 table-induced part {tp:.2e}, {tx:.2e} (|d abar_t| {dab_t:.1e}, |d abar_prev| {dab_prev:.1e})",
                max_abs_diff(&s.pred_original_sample, want_x0)
            );
            assert!(dp <= 1e-6 && dx <= 1e-6, "{variant} step {idx}: {dp} {dx}");
            assert!(ep <= 1e-6 + tp && ex <= 1e-6 + tx);
        }
    }
}

#[test]
fn ddpm_posterior_mean_and_variances_match_diffusers() {
    let g = load_golden("ddim_step.safetensors");
    let (x, mo) = (&g["sample"], &g["model_output"]);
    let dab = common::diffusers_alpha_bar("linear");
    let ours = Schedule::named(BetaSchedule::Linear, 1000).unwrap();
    for (variant, clip) in [("ddpm", None), ("ddpm_clip", Some(1.0))] {
        let ts = i64s(&g[&format!("{variant}_step_t")]);
        assert_eq!(ts, vec![999, 500, 0]);
        let small = f32s(&g[&format!("{variant}_variance_fixed_small")]);
        let large = f32s(&g[&format!("{variant}_variance_fixed_large")]);
        let p = DdpmParams {
            prediction: PredictionType::Epsilon,
            variance: VarianceType::FixedSmall,
            clip,
        };
        for (k, &t) in ts.iter().enumerate() {
            let want_mean = &g[&format!("{variant}_t{t}_pred_prev_mean")];
            let want_x0 = &g[&format!("{variant}_t{t}_pred_original_sample")];
            // Full 1000-step chain: prev_t = t - 1, and alpha_bar before 0 is 1.
            let at = |ab: &[f64]| (ab[t], if t > 0 { ab[t - 1] } else { 1.0 });
            let a = dab[t].sqrt();
            let mut outs = Vec::new();
            for (label, ab) in [
                ("diffusers alpha_bar", &dab),
                ("our f64 tables", &ours.alpha_bar),
            ] {
                let (ab_t, ab_prev) = at(ab);
                let s = ddpm_step(mo, x, ab_t, ab_prev, &p, None).unwrap();
                let dm = max_abs_diff(&s.prev_sample, want_mean);
                let dx = a * max_abs_diff(&s.pred_original_sample, want_x0);
                let vs = ddpm_variance(ab_t, ab_prev, VarianceType::FixedSmall).unwrap();
                let vl = ddpm_variance(ab_t, ab_prev, VarianceType::FixedLarge).unwrap();
                let (ds, dl) = ((vs - small[k]).abs(), (vl - large[k]).abs());
                println!(
                    "{variant} t {t}, {label}: mean {dm:.2e}, x0 (x sqrt(abar)) {dx:.2e}, \
                     fixed_small {ds:.2e} (rel {:.1e}), fixed_large {dl:.2e} (rel {:.1e})",
                    ds / small[k].max(1e-20),
                    dl / large[k].max(1e-20)
                );
                assert!(
                    ds <= 1e-6 && dl <= 1e-6,
                    "{variant} t {t} {label}: {ds} {dl}"
                );
                outs.push((s, dm, dx));
            }
            let (sd, dm, dx) = &outs[0];
            assert!(*dm <= 1e-6 && *dx <= 1e-6, "{variant} t {t}: {dm} {dx}");
            // With our tables: 1e-6 plus the part the table difference alone causes.
            let (so, om, ox) = &outs[1];
            let tm = max_abs_diff(&so.prev_sample, &sd.prev_sample);
            let tx = a * max_abs_diff(&so.pred_original_sample, &sd.pred_original_sample);
            println!("{variant} t {t}: table-induced part: mean {tm:.2e}, x0 {tx:.2e}");
            assert!(*om <= 1e-6 + tm && *ox <= 1e-6 + tx);
        }
    }
}

#[test]
fn whole_chains_match_diffusers() {
    let g = load_golden("sampler_chains.safetensors");
    let x_t = &g["x_T"];
    let m: Vec<f32> = g["m"].flatten_all().unwrap().to_vec1().unwrap();
    let (mut worst, mut worst_emulated) = (0f64, 0f64);
    let mut count = 0;
    for sched in ["linear", "squaredcos_cap_v2"] {
        let dab = common::diffusers_alpha_bar(sched);
        for (pred, pname) in [
            (PredictionType::Epsilon, "epsilon"),
            (PredictionType::VPrediction, "v_prediction"),
        ] {
            let runs = [
                (
                    SamplerKind::Ddim,
                    "ddim",
                    TimestepSpacing::Leading,
                    "leading",
                    50,
                ),
                (
                    SamplerKind::Ddim,
                    "ddim",
                    TimestepSpacing::Trailing,
                    "trailing",
                    50,
                ),
                (
                    SamplerKind::Ddim,
                    "ddim",
                    TimestepSpacing::Linspace,
                    "linspace",
                    50,
                ),
                (
                    SamplerKind::DpmSolverPP,
                    "dpmpp2m",
                    TimestepSpacing::Linspace,
                    "linspace",
                    20,
                ),
                (
                    SamplerKind::DpmSolverPP,
                    "dpmpp2m",
                    TimestepSpacing::Trailing,
                    "trailing",
                    10,
                ),
            ];
            for (kind, kname, spacing, sname, steps) in runs {
                let key = format!("{kname}_{sched}_{pname}_{sname}_{steps}");
                let cfg = common::chain_config(kind, sched, pred, spacing, steps);
                let mut ours = build(&cfg).unwrap();
                let want_t: Vec<f64> = i64s(&g[&format!("{key}_timesteps")])
                    .into_iter()
                    .map(|t| t as f64)
                    .collect();
                assert_eq!(ours.timesteps(), &want_t[..], "{key}");
                let mut model = common::analytic_model(m.clone(), dab.clone(), pred);
                let mut rng = NoiseRng::new(0);
                let x0 = run(ours.as_mut(), &mut model, x_t, &mut rng, None).unwrap();
                // diffusers' own alpha_bar table, and (DPM) its f32 sigma arithmetic.
                let mut emulated =
                    build_with_arithmetic(&cfg, &dab, SigmaArithmetic::DiffusersF32).unwrap();
                let x0_d = run(emulated.as_mut(), &mut model, x_t, &mut rng, None).unwrap();
                let want = &g[&format!("{key}_x0")];
                let (e, ed) = (max_abs_diff(&x0, want), max_abs_diff(&x0_d, want));
                // For information: DPM-Solver++ levels formed in f64 instead of diffusers' f32.
                let mut f64_levels =
                    build_with_arithmetic(&cfg, &dab, SigmaArithmetic::F64).unwrap();
                let x0_f = run(f64_levels.as_mut(), &mut model, x_t, &mut rng, None).unwrap();
                let ef = max_abs_diff(&x0_f, want);
                println!(
                    "{key}: final sample max err {e:.2e} (defaults: our f64 tables), {ed:.2e} \
                     (diffusers' alpha_bar), {ef:.2e} (f64 DPM levels)"
                );
                assert!(ed <= 1e-4, "{key}: {ed}");
                assert!(e <= 1e-4, "{key}: {e}");
                assert!(ef < 5e-4, "{key}: f64 levels {ef}");
                worst_emulated = worst_emulated.max(ed);
                assert_eq!(rng.draws, 0, "deterministic samplers draw no noise");
                worst = worst.max(e);
                count += 1;
            }
        }
    }
    assert_eq!(count, 20);
    println!(
        "worst final-sample error over {count} chains: {worst:.2e} (our f64 tables), \
         {worst_emulated:.2e} (diffusers' table and f32 sigmas)"
    );
}

fn dummy_model(x: &Tensor, _t: &Tensor) -> Result<Tensor> {
    Ok(x.zeros_like()?)
}

#[test]
fn bad_inputs_are_usage_errors() {
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let mut rng = NoiseRng::new(0);
    let run_cfg = |cfg: SamplerConfig| {
        let mut m = dummy_model;
        sample(&mut m, &x, &cfg, &mut NoiseRng::new(0), None).unwrap_err()
    };
    for (cfg, needle) in [
        (
            SamplerConfig {
                steps: 0,
                ..Default::default()
            },
            "at least 1",
        ),
        (
            SamplerConfig {
                steps: 1001,
                ..Default::default()
            },
            "1001",
        ),
        (
            SamplerConfig {
                eta: 1.5,
                ..Default::default()
            },
            "eta 1.5",
        ),
        (
            SamplerConfig {
                eta: -0.1,
                ..Default::default()
            },
            "eta",
        ),
        (
            SamplerConfig {
                kind: SamplerKind::DpmSolverPP,
                steps: 0,
                ..Default::default()
            },
            "at least 1",
        ),
        (
            SamplerConfig {
                kind: SamplerKind::Ddpm,
                steps: 2000,
                ..Default::default()
            },
            "2000",
        ),
    ] {
        let e = run_cfg(cfg);
        let msg = e.to_string();
        assert!(
            e.is_usage() && msg.contains(needle) && !msg.contains('\n'),
            "{msg}"
        );
    }
    let e = SamplerKind::parse("eulr").unwrap_err();
    let msg = e.to_string();
    assert!(
        e.is_usage()
            && msg.contains("unknown sampler 'eulr'")
            && SamplerKind::ALL.iter().all(|k| msg.contains(k.name())),
        "{e}"
    );
    for (name, kind) in [
        (
            "EulerAncestralDiscreteScheduler",
            SamplerKind::EulerAncestral,
        ),
        ("euler_a", SamplerKind::EulerAncestral),
        ("HEUN", SamplerKind::Heun),
        ("dpm++3m", SamplerKind::DpmSolverPP3M),
        ("dpm++2m-sde", SamplerKind::DpmSolverSde),
        ("UniPCMultistepScheduler", SamplerKind::UniPc),
        ("plms", SamplerKind::Pndm),
        ("DEISMultistepScheduler", SamplerKind::Deis),
    ] {
        assert_eq!(SamplerKind::parse(name).unwrap(), kind, "{name}");
    }
    // Karras where there are no sigmas; PNDM on an x0 model; a DEIS order diffusers lacks.
    let karras_ddim = SamplerConfig {
        kind: SamplerKind::Ddim,
        karras: true,
        ..Default::default()
    };
    let e = build(&karras_ddim).err().unwrap();
    assert!(
        e.is_usage()
            && e.to_string().contains("--karras")
            && e.to_string().contains("ddim has none"),
        "{e}"
    );
    let mut pndm_x0 = SamplerConfig {
        kind: SamplerKind::Pndm,
        ..Default::default()
    };
    pndm_x0.scheduler.prediction_type = PredictionType::Sample;
    let e = build(&pndm_x0).err().unwrap();
    assert!(e.is_usage() && e.to_string().contains("pndm"), "{e}");
    let mut deis3 = SamplerConfig {
        kind: SamplerKind::Deis,
        ..Default::default()
    };
    deis3.scheduler.solver_order = Some(3);
    let e = build(&deis3).err().unwrap();
    assert!(
        e.is_usage() && e.to_string().contains("solver_order"),
        "{e}"
    );
    // Every sampler refuses 0 steps and more steps than T, in one line.
    for kind in SamplerKind::ALL {
        for steps in [0, 1001] {
            let cfg = SamplerConfig {
                kind,
                steps,
                ..Default::default()
            };
            let e = build(&cfg).err().unwrap();
            let msg = e.to_string();
            assert!(
                e.is_usage() && !msg.contains('\n'),
                "{kind:?} {steps}: {msg}"
            );
        }
    }
    assert_eq!(
        "DPM-Solver++".parse::<SamplerKind>().unwrap(),
        SamplerKind::DpmSolverPP
    );
    assert_eq!(SamplerKind::parse("ddpm").unwrap(), SamplerKind::Ddpm);
    // A model that returns the wrong shape is a model error, not a panic.
    let mut bad = |x: &Tensor, _t: &Tensor| -> Result<Tensor> { Ok(x.narrow(3, 0, 2)?) };
    let e = sample(&mut bad, &x, &SamplerConfig::default(), &mut rng, None).unwrap_err();
    assert!(!e.is_usage() && e.to_string().contains("shape"), "{e}");
    // f64 start noise is refused with a clear message.
    let x64 = x.to_dtype(DType::F64).unwrap();
    let mut m = dummy_model;
    let e = sample(&mut m, &x64, &SamplerConfig::default(), &mut rng, None).unwrap_err();
    assert!(e.to_string().contains("f32"), "{e}");
}

/// Exact mean and variance of a stochastic sampler's output under the analytic denoiser,
/// whose x0 estimate is affine in x_t: x0_hat = m + k (x_t - a m), k = a s^2 / (a^2 s^2 + sig^2).
/// Each step is then x_prev = A x_t + (terms in m) + std z, so mean and variance follow a
/// scalar recursion per pixel.
fn theory(
    kind: SamplerKind,
    ts: &[usize],
    ab: &[f64],
    eta: f64,
    var: VarianceType,
    m: &[f32],
) -> (Vec<f64>, f64) {
    let s2 = 0.25;
    let mut mean = vec![0f64; m.len()];
    let mut v = 1.0;
    for (i, &t) in ts.iter().enumerate() {
        let ab_t = ab[t];
        let (a, sig) = (ab_t.sqrt(), (1.0 - ab_t).sqrt());
        let k = a * s2 / (a * a * s2 + sig * sig);
        let (std, step): (f64, Box<dyn Fn(f64, f64) -> f64>) = match kind {
            SamplerKind::Ddpm => {
                let ab_prev = ts.get(i + 1).map_or(1.0, |p| ab[*p]);
                let (c0, ct) = diffusers_posterior(ab_t, ab_prev);
                let std = if t > 0 {
                    ddpm_variance(ab_t, ab_prev, var).unwrap().sqrt()
                } else {
                    0.0
                };
                (
                    std,
                    Box::new(move |x, mj| c0 * (mj + k * (x - a * mj)) + ct * x),
                )
            }
            _ => {
                let ab_prev = if t >= 10 { ab[t - 10] } else { 1.0 };
                let std = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)).sqrt();
                let dir = (1.0 - ab_prev - std * std).max(0.0).sqrt();
                (
                    std,
                    Box::new(move |x, mj| {
                        let x0 = mj + k * (x - a * mj);
                        ab_prev.sqrt() * x0 + dir * (x - a * x0) / sig
                    }),
                )
            }
        };
        let slope = step(1.0, 0.0) - step(0.0, 0.0);
        for (mu, mj) in mean.iter_mut().zip(m) {
            *mu = step(*mu, *mj as f64);
        }
        v = slope * slope * v + std * std;
    }
    (mean, v)
}

fn diffusers_posterior(ab_t: f64, ab_prev: f64) -> (f64, f64) {
    diffuse::sampler::ddpm::ddpm_posterior_coeffs(ab_t, ab_prev)
}

/// Stochastic paths (no golden covers them): DDPM (both variances, full and respaced) and
/// DDIM eta = 1, with the exact denoiser, against the exact mean and variance of each
/// sampler's output (above). n chains of 8x8 pixels; bounds are 5 standard errors: per
/// pixel mean sqrt(v/n), pooled variance v sqrt(2/(64 (n-1))).
#[test]
fn stochastic_samplers_have_the_exact_output_moments() {
    let ab = Schedule::named(BetaSchedule::Linear, 1000)
        .unwrap()
        .alpha_bar;
    let n = 2000;
    let m: Vec<f32> = (0..64).map(|i| (i as f32 / 63.0) * 2.0 - 1.0).collect();
    for (kind, steps, eta, var) in [
        (SamplerKind::Ddpm, 1000, 0.0, VarianceType::FixedSmall),
        (SamplerKind::Ddpm, 1000, 0.0, VarianceType::FixedLarge),
        (SamplerKind::Ddpm, 100, 0.0, VarianceType::FixedSmall),
        (SamplerKind::Ddim, 100, 1.0, VarianceType::FixedSmall),
        (SamplerKind::Ddim, 100, 0.5, VarianceType::FixedSmall),
    ] {
        let mut cfg = common::chain_config(
            kind,
            "linear",
            PredictionType::Epsilon,
            TimestepSpacing::Leading,
            steps,
        );
        cfg.eta = eta;
        cfg.scheduler.variance_type = Some(var);
        let ts: Vec<usize> = build(&cfg)
            .unwrap()
            .timesteps()
            .iter()
            .map(|t| *t as usize)
            .collect();
        let (mean_th, var_th) = theory(kind, &ts, &ab, eta, var, &m);
        let mut rng = NoiseRng::new(42);
        let x_t = rng.randn((n, 1, 8, 8), &Device::Cpu).unwrap();
        let mut model = common::analytic_model(m.clone(), ab.clone(), PredictionType::Epsilon);
        let mut seen = 0;
        let mut cb = |s: &StepInfo| -> Result<()> {
            assert_eq!((s.index, s.t), (seen, ts[seen] as f64));
            seen += 1;
            Ok(())
        };
        let draws0 = rng.draws;
        let x0 = sample(&mut model, &x_t, &cfg, &mut rng, Some(&mut cb)).unwrap();
        assert_eq!(seen, steps);
        let noisy_steps = if kind == SamplerKind::Ddpm {
            ts.iter().filter(|t| **t > 0).count()
        } else {
            steps
        };
        assert_eq!(
            rng.draws - draws0,
            noisy_steps as u64,
            "one noise draw per stochastic step"
        );
        let v: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let (mut worst_mean, mut var_sum) = (0f64, 0f64);
        for j in 0..64 {
            let col: Vec<f64> = (0..n).map(|i| v[i * 64 + j] as f64).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            var_sum += col.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            worst_mean = worst_mean.max((mean - mean_th[j]).abs() / (var_th / n as f64).sqrt());
        }
        let var_emp = var_sum / 64.0;
        let se_var = var_th * (2.0 / (64.0 * (n - 1) as f64)).sqrt();
        println!(
            "{kind:?} steps {steps} eta {eta} {var:?}: worst pixel mean {worst_mean:.2} SE; \
             variance {var_emp:.4} vs exact {var_th:.4} ({:.2} SE; data variance 0.25)",
            (var_emp - var_th) / se_var
        );
        assert!(
            worst_mean < 5.0,
            "{kind:?} {var:?}: mean off by {worst_mean} SE"
        );
        assert!(
            (var_emp - var_th).abs() < 5.0 * se_var,
            "{kind:?} {var:?}: variance {var_emp} vs {var_th}"
        );
    }
}
