//! Sample quality against model evaluations for every sampler, on a trained digit model:
//! `cargo run --release --example sampler_sweep -- MODEL OUT_DIR [N] [--rescore]`. For each
//! sampler and step count it draws N samples (default 1000, seed 0, the same start noise for
//! all), times the run, then scores every set with `diffuse eval`'s classifier-feature FID/KID
//! and writes OUT_DIR/sweep.tsv and OUT_DIR/sampler_fid.png. `--rescore` scores the samples
//! a previous sweep left in OUT_DIR again (keeping its timings) instead of drawing them.
use diffuse::commands::eval::{self, EvalRequest};
use diffuse::commands::sample::{self, SampleRequest};
use diffuse::data::DataConfig;
use diffuse::io::plot::{write_figure, Panel, Series};
use diffuse::sampler::SamplerKind;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).cloned().unwrap_or_else(|| "out/mnist".into());
    let out = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "out/sweep".into()));
    let n: usize = args.get(3).map_or(Ok(1000), |s| s.parse())?;
    let rescore = args.iter().any(|a| a == "--rescore");
    // The previous sweep's seconds per run, by sampler, Karras and steps.
    let old_tsv = std::fs::read_to_string(out.join("sweep.tsv")).unwrap_or_default();
    let old_secs = |k: &str, karras: bool, s: usize| -> Option<f64> {
        old_tsv.lines().find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() > 4 && f[0] == k && f[1] == karras.to_string() && f[2] == s.to_string())
                .then(|| f[4].parse().ok())
                .flatten()
        })
    };
    std::fs::create_dir_all(&out)?;
    let device = candle_core::Device::Cpu;
    use SamplerKind::*;
    // (sampler, Karras, step counts): about 10 and 20 model evaluations each, 5 for the
    // solvers built for few steps, DDIM up to 50 and DDPM at 100 as references.
    let plan: Vec<(SamplerKind, bool, Vec<usize>)> = vec![
        (Ddpm, false, vec![100]),
        (Ddim, false, vec![10, 20, 50]),
        (Euler, false, vec![10, 20]),
        (Euler, true, vec![10, 20]),
        (EulerAncestral, false, vec![10, 20]),
        (Heun, false, vec![5, 10]),
        (DpmSolverPP, false, vec![5, 10, 20]),
        (DpmSolverPP, true, vec![10, 20]),
        (DpmSolverPP3M, false, vec![10, 20]),
        (DpmSolverSde, false, vec![10, 20]),
        (UniPc, false, vec![5, 10, 20]),
        (Pndm, false, vec![9, 19]),
        (Deis, false, vec![5, 10, 20]),
    ];
    let mut runs = Vec::new();
    for (kind, karras, steps) in &plan {
        for &s in steps {
            let name = format!(
                "{}{}_{s}",
                kind.name(),
                if *karras { "-karras" } else { "" }
            );
            let tensors = out.join(format!("{name}.safetensors"));
            let req = SampleRequest {
                model: model.clone(),
                kind: Some(*kind),
                steps: Some(s),
                eta: 0.0,
                karras: *karras,
                class: None,
                guidance: vec![],
                init: None,
                strength: 0.8,
                mask: None,
                jump_length: sample::REPAINT_JUMP_LENGTH,
                jump_n_sample: sample::REPAINT_JUMP_N_SAMPLE,
                trace: None,
                trace_steps: 10,
                precision: Default::default(),
                spacing: None,
                clip_sample: None,
                prediction: None,
                num: n,
                batch_size: Some(250),
                seed: 0,
                output: out.join(format!("{name}.png")),
                gif: None,
                gif_frames: 25,
                save_tensors: Some(tensors.clone()),
                progress: false,
            };
            let secs = match (rescore, old_secs(kind.name(), *karras, s)) {
                (true, Some(secs)) if tensors.is_file() => secs,
                (true, _) => anyhow::bail!("--rescore: no samples or timing for {name}"),
                _ => {
                    let t0 = Instant::now();
                    sample::run(&req, &device)?;
                    t0.elapsed().as_secs_f64()
                }
            };
            let nfe = kind.evaluations(s);
            println!("{name}: {nfe} evaluations, {secs:.1} s for {n} samples");
            runs.push((name, *kind, *karras, s, nfe, secs, tensors));
        }
    }
    let report = eval::run(
        &EvalRequest {
            samples: runs.iter().map(|r| r.6.clone()).collect(),
            data: DataConfig {
                dataset: "mnist".into(),
                hflip: Some(false),
                in_channels: 1,
                sample_size: 28,
                ..DataConfig::default()
            },
            features: None,
            model: None,
            num: 0,
            progress: false,
        },
        &device,
    )?;
    print!("{}", report.table());
    let mut tsv =
        String::from("sampler\tkarras\tsteps\tnfe\tseconds\tms_per_sample\tfid\tkid_x1000\n");
    let mut series: Vec<Series> = Vec::new();
    let mut kid_series: Vec<Series> = Vec::new();
    for (r, row) in runs.iter().zip(&report.rows) {
        tsv.push_str(&format!(
            "{}\t{}\t{}\t{}\t{:.2}\t{:.2}\t{:.3}\t{:.3}\n",
            r.1.name(),
            r.2,
            r.3,
            r.4,
            r.5,
            1000.0 * r.5 / n as f64,
            row.fid,
            1000.0 * row.kid
        ));
        let label = format!("{}{}", r.1.name(), if r.2 { " karras" } else { "" });
        for (list, v) in [(&mut series, row.fid), (&mut kid_series, 1000.0 * row.kid)] {
            match list.iter_mut().find(|s| s.name == label) {
                Some(s) => s.points.push((r.4 as f64, v)),
                None => list.push(Series {
                    name: label.clone(),
                    points: vec![(r.4 as f64, v)],
                }),
            }
        }
    }
    tsv.push_str(&format!(
        "# real held-out digits ({}, n = {}) against {}: fid {:.3}, kid_x1000 {:.3}; feature network accuracy {:.2}%\n",
        report.real[0].name,
        report.real[0].n,
        report.reference_images,
        report.real[0].fid,
        1000.0 * report.real[0].kid,
        100.0 * report.classifier_accuracy
    ));
    std::fs::write(out.join("sweep.tsv"), &tsv)?;
    // DDPM's 100-250 evaluations would squeeze the others: the figure stops at 60.
    for s in series.iter_mut().chain(kid_series.iter_mut()) {
        s.points.retain(|(x, _)| *x <= 60.0);
    }
    series.retain(|s| !s.points.is_empty());
    kid_series.retain(|s| !s.points.is_empty());
    write_figure(
        &out.join("sampler_fid.png"),
        "model evaluations per sample (NFE)",
        &[
            Panel {
                title: format!(
                    "FID in classifier features, {n} samples ({} real digits: {:.2})",
                    report.real[0].n, report.real[0].fid
                ),
                y_label: "FID".into(),
                series,
            },
            Panel {
                title: "KID x 1000".into(),
                y_label: "KID x 1000".into(),
                series: kid_series,
            },
        ],
    )?;
    print!("{tsv}");
    Ok(())
}
