//! Guided generation against diffusers 0.42.1 (tests/data/guided_chains.safetensors and
//! unet_class/): the class-conditional UNet2DModel, classifier-free guidance chains and
//! img2img (SDEdit) and RePaint chains, with the analytic class-conditional denoiser; DDPM's img2img
//! replays diffusers' recorded noise through the NoiseSource seam.
mod common;

use candle_core::{DType, Device, Tensor};
use diffuse::sampler::guidance::guided;
use diffuse::sampler::{
    build_with, img2img_start, run, run_from, Recorded, SamplerConfig, SchedulerConfig,
};
use diffuse::unet;
use std::collections::HashMap;

const FILE: &str = "guided_chains.safetensors";

struct Case {
    name: String,
    cfg: SamplerConfig,
    extra: serde_json::Value,
}

fn cases(prefix: &str) -> Vec<Case> {
    let configs = configs();
    let mut out: Vec<Case> = configs
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(name, v)| {
            let mut sc = SchedulerConfig::from_json(&v["config"].to_string()).unwrap();
            sc.class_name = v["cls"].as_str().unwrap().to_string();
            let kind = sc.sampler_kind().unwrap();
            Case {
                cfg: SamplerConfig {
                    kind,
                    steps: v["steps"].as_u64().unwrap() as usize,
                    eta: 0.0,
                    karras: false,
                    scheduler: sc,
                },
                extra: v,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The unconditional denoiser's mean `m` of the second golden set (stored in
/// sampler_chains_more.safetensors; the img2img, RePaint and inversion cases use it).
fn mean_m() -> Vec<f32> {
    common::load_golden("sampler_chains_more.safetensors")["m"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Each case's settings, from the file's metadata.
fn configs() -> HashMap<String, serde_json::Value> {
    let meta = common::golden_metadata(FILE);
    serde_json::from_str(&diffuse::sampler::config::sanitize_python_json(
        &meta["configs"],
    ))
    .unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    (0..t.dim(0).unwrap())
        .map(|i| t.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn table(g: &HashMap<String, Tensor>, sc: &SchedulerConfig) -> (Vec<f32>, Vec<f64>) {
    let ab: Vec<f32> = g[&format!("alphas_cumprod_{}", sc.beta_schedule)]
        .to_vec1()
        .unwrap();
    let ab64 = ab.iter().map(|a| *a as f64).collect();
    (ab, ab64)
}

fn ints(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

#[test]
fn class_conditional_unet_matches_diffusers() {
    let dev = Device::Cpu;
    let (cfg, _, model) = unet::load(&common::data_path("unet_class"), &dev).unwrap();
    assert_eq!(cfg.num_class_embeds, Some(11));
    let io = common::load_golden("unet_class/io.safetensors");
    let labels = &io["class_labels"];
    let out = model
        .forward_cond(&io["x"], &io["timesteps"], Some(labels), false)
        .unwrap();
    let d = common::max_abs_diff(&out, &io["output"]);
    let d64 = common::max_abs_diff(&out, &io["output_f64"]);
    println!("unet_class: output max err {d:.2e} (f64 reference {d64:.2e})");
    assert!(d < 1e-4 && d64 < 1e-4, "{d} {d64}");
    // Other labels: diffusers' other output, and a different one from ours.
    let other = io
        .get("class_labels_other")
        .cloned()
        .unwrap_or_else(|| labels.flip(&[0]).unwrap());
    let out2 = model
        .forward_cond(&io["x"], &io["timesteps"], Some(&other), false)
        .unwrap();
    let d2 = common::max_abs_diff(&out2, &io["output_other_labels"]);
    println!("unet_class: other labels max err {d2:.2e}");
    assert!(d2 < 1e-4, "{d2}");
    assert!(
        common::max_abs_diff(&out, &out2) > 1e-3,
        "labels must matter"
    );
    // Labels are required, must be in range, and an unconditional model refuses them.
    let e = model
        .forward(&io["x"], &io["timesteps"], false)
        .unwrap_err();
    assert!(e.to_string().contains("class labels are required"), "{e}");
    let bad = Tensor::new(&[0u32, 11], &dev).unwrap();
    let e = model
        .forward_cond(&io["x"], &io["timesteps"], Some(&bad), false)
        .unwrap_err();
    assert!(e.to_string().contains("outside [0, 11)"), "{e}");
    let (_, _, plain) = unet::load(&common::data_path("unet_tiny"), &dev).unwrap();
    let e = plain
        .forward_cond(&io["x"], &io["timesteps"], Some(labels), false)
        .unwrap_err();
    assert!(e.to_string().contains("not class-conditional"), "{e}");
}

#[test]
fn classifier_free_guidance_chains_match_diffusers() {
    let g = common::load_golden(FILE);
    let means = rows(&g["class_means"]);
    let null = (means.len() - 1) as u32;
    let labels = g["class_labels"].to_dtype(DType::U32).unwrap();
    let cs = cases("cfg_");
    assert_eq!(cs.len(), 2);
    for c in cs {
        let sc = &c.cfg.scheduler;
        let (ab, ab64) = table(&g, sc);
        let w = c.extra["guidance"].as_f64().unwrap();
        let mut s = build_with(&c.cfg, &ab64).unwrap();
        assert_eq!(
            s.timesteps(),
            &ints(&g[&format!("{}_timesteps", c.name)])[..]
        );
        let pred = sc.prediction_type;
        let means = means.clone();
        let mut cond = move |x: &Tensor, t: &Tensor, l: &Tensor| -> diffuse::Result<Tensor> {
            let l: Vec<u32> = l.to_vec1()?;
            let rows = l.iter().map(|k| means[*k as usize].clone()).collect();
            common::sigma_model(rows, ab.clone(), pred)(x, t)
        };
        let mut model = guided(&mut cond, &labels, null, w).unwrap();
        let x0 = run(
            s.as_mut(),
            &mut model,
            &g["x_T"],
            &mut Recorded::new(vec![]),
            None,
        )
        .unwrap();
        let e = common::max_abs_diff(&x0, &g[&format!("{}_x0", c.name)]);
        println!("{}: max err {e:.2e}", c.name);
        assert!(e <= 1e-4, "{}: {e}", c.name);
    }
}

#[test]
fn img2img_chains_match_diffusers() {
    let g = common::load_golden(FILE);
    let m = mean_m();
    let cs = cases("img2img_");
    assert_eq!(cs.len(), 3);
    for c in cs {
        let sc = &c.cfg.scheduler;
        let (ab, ab64) = table(&g, sc);
        let strength = c.extra["strength"].as_f64().unwrap();
        let mut s = build_with(&c.cfg, &ab64).unwrap();
        let start = img2img_start(s.as_ref(), c.cfg.steps, strength).unwrap();
        let want_t = ints(&g[&format!("{}_timesteps", c.name)]);
        assert_eq!(&s.timesteps()[start..], &want_t[..], "{}", c.name);
        let x = s
            .add_noise(start, &g["init_image"], &g[&format!("{}_noise0", c.name)])
            .unwrap();
        // The unconditional denoiser of the second set, mean `m` (stored in
        // sampler_chains_more.safetensors; the img2img cases were made with it).
        let mut model = common::sigma_model(vec![m.clone()], ab.clone(), sc.prediction_type);
        let mut noise = match g.get(&format!("{}_noise", c.name)) {
            Some(z) => Recorded::from_stacked(z).unwrap(),
            None => Recorded::new(vec![]),
        };
        let x0 = run_from(s.as_mut(), &mut model, &x, start, &mut noise, None).unwrap();
        let e = common::max_abs_diff(&x0, &g[&format!("{}_x0", c.name)]);
        println!("{} (from step {start}): max err {e:.2e}", c.name);
        assert!(e <= 1e-4, "{}: {e}", c.name);
        if let Some(z) = g.get(&format!("{}_noise", c.name)) {
            assert_eq!(noise.used(), z.dim(0).unwrap());
        }
    }
}

#[test]
fn ddim_inversion_round_trips_like_diffusers() {
    let g = common::load_golden(FILE);
    let m = mean_m();
    let configs = configs();
    let mut n_cases = 0;
    for (name, v) in configs.iter().filter(|(k, _)| k.starts_with("invert_")) {
        let steps = v["steps"].as_u64().unwrap() as usize;
        let inv_sc = SchedulerConfig::from_json(&v["inverse"].to_string()).unwrap();
        let mut fwd_sc = SchedulerConfig::from_json(&v["forward"].to_string()).unwrap();
        fwd_sc.class_name = "DDIMScheduler".into();
        let (ab, ab64) = table(&g, &inv_sc);
        let cfg = |sc: SchedulerConfig| SamplerConfig {
            kind: diffuse::sampler::SamplerKind::Ddim,
            steps,
            eta: 0.0,
            karras: false,
            scheduler: sc,
        };
        let mut inv =
            diffuse::sampler::inversion::DdimInverse::new(&cfg(inv_sc.clone()), &ab64).unwrap();
        assert_eq!(
            diffuse::sampler::Scheduler::timesteps(&inv),
            &ints(&g[&format!("{name}_inv_timesteps")])[..],
            "{name}"
        );
        let mut model = common::sigma_model(vec![m.clone()], ab.clone(), inv_sc.prediction_type);
        let latent = run_from(
            &mut inv,
            &mut model,
            &g["init_image"],
            0,
            &mut Recorded::new(vec![]),
            None,
        )
        .unwrap();
        let el = common::max_abs_diff(&latent, &g[&format!("{name}_latent")]);
        let mut fwd = build_with(&cfg(fwd_sc), &ab64).unwrap();
        let x0 = run(
            fwd.as_mut(),
            &mut model,
            &latent,
            &mut Recorded::new(vec![]),
            None,
        )
        .unwrap();
        let ex = common::max_abs_diff(&x0, &g[&format!("{name}_x0")]);
        let back = common::max_abs_diff(&x0, &g["init_image"]);
        println!("{name}: latent max err {el:.2e}, reconstruction max err {ex:.2e} (vs the image itself {back:.2e})");
        assert!(el <= 1e-4 && ex <= 1e-4, "{name}: {el} {ex}");
        n_cases += 1;
    }
    assert_eq!(n_cases, 2);
}

#[test]
fn repaint_chains_match_diffusers() {
    use diffuse::sampler::repaint::{inpaint, RePaint, RePaintConfig};
    let g = common::load_golden(FILE);
    let m = mean_m();
    let configs = configs();
    let mut names: Vec<&String> = configs
        .keys()
        .filter(|k| k.starts_with("repaint_"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2);
    for name in names {
        let v = &configs[name];
        let sc = SchedulerConfig::from_json(&v["config"].to_string()).unwrap();
        let rc = RePaintConfig {
            steps: v["steps"].as_u64().unwrap() as usize,
            jump_length: v["jump_length"].as_u64().unwrap() as usize,
            jump_n_sample: v["jump_n_sample"].as_u64().unwrap() as usize,
            eta: v["eta"].as_f64().unwrap(),
        };
        let (ab, ab64) = table(&g, &sc);
        // diffusers' betas are its f32 ones; ours rounded to f32 agree within an ulp.
        let schedule =
            diffuse::core::schedule::Schedule::new(&sc.schedule_config().unwrap()).unwrap();
        let betas: Vec<f64> = schedule.betas.iter().map(|b| *b as f32 as f64).collect();
        let rp = RePaint::with_tables(&rc, &sc, &ab64, &betas).unwrap();
        let want_t: Vec<usize> = ints(&g[&format!("{name}_timesteps")])
            .into_iter()
            .map(|x| x as usize)
            .collect();
        assert_eq!(rp.timesteps(), &want_t[..], "{name}");
        assert_eq!(rc.timesteps().len(), want_t.len(), "{name}");
        let mut model = common::sigma_model(vec![m.clone()], ab.clone(), sc.prediction_type);
        let z = &g[&format!("{name}_noise")];
        let mut noise = Recorded::from_stacked(z).unwrap();
        let x0 = inpaint(
            &rp,
            &mut model,
            &g["x_T"],
            &g["init_image"],
            &g["mask"],
            &mut noise,
            None,
        )
        .unwrap();
        assert_eq!(noise.used(), z.dim(0).unwrap(), "{name}: every draw used");
        let e = common::max_abs_diff(&x0, &g[&format!("{name}_x0")]);
        // Where the mask keeps, the result is the init image (noised to level 0: itself).
        let mask = &g["mask"];
        let kept =
            common::max_abs_diff(&(&x0 * mask).unwrap(), &(&g["init_image"] * mask).unwrap());
        println!("{name}: max err {e:.2e}, kept pixels off the image by {kept:.2e}");
        assert!(e <= 1e-4, "{name}: {e}");
        assert!(kept <= 1e-6, "{name}: {kept}");
    }
}

/// Refined inversion (fixed-point iterations per step) is the exact inverse of DDIM's step
/// down, so DDIM draws the image back: theory, checked with the analytic denoiser on the
/// golden inversion configs, against diffusers' plain inversion on the same model.
#[test]
fn refined_inversion_reconstructs_the_image() {
    use diffuse::sampler::inversion::{ddim_config, invert};
    let g = common::load_golden(FILE);
    let m = mean_m();
    let configs = configs();
    let mut n_cases = 0;
    for (name, v) in configs.iter().filter(|(k, _)| k.starts_with("invert_")) {
        let steps = v["steps"].as_u64().unwrap() as usize;
        let sc = SchedulerConfig::from_json(&v["forward"].to_string()).unwrap();
        let (ab, _) = table(&g, &sc);
        let cfg = ddim_config(&sc, steps);
        let mut model = common::sigma_model(vec![m.clone()], ab.clone(), sc.prediction_type);
        let mut err = |refine: usize| {
            let latent = invert(&mut model, &g["init_image"], &cfg, refine, None).unwrap();
            let mut fwd = diffuse::sampler::build(&cfg).unwrap();
            let x0 = run(
                fwd.as_mut(),
                &mut model,
                &latent,
                &mut Recorded::new(vec![]),
                None,
            )
            .unwrap();
            common::max_abs_diff(&x0, &g["init_image"])
        };
        let (plain, refined) = (err(0), err(10));
        println!("{name}: reconstruction max err {plain:.2e} plain, {refined:.2e} refined x10");
        assert!(refined <= 1e-4, "{name}: {refined}");
        assert!(refined < plain, "{name}: {refined} vs {plain}");
        n_cases += 1;
    }
    assert_eq!(n_cases, 2);
}
