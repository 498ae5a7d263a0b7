//! Every subcommand with random combinations of flags and values (valid, boundary and bad),
//! drawn from a seeded generator: no panic, exit 0/1/2 only, one stderr line on failure, and
//! no output left behind by a failed command. `DIFFUSE_FUZZ_CASES` sets the number of cases
//! (default 600; each runs in its own empty working directory), `DIFFUSE_FUZZ_SEED` the seed.
mod common;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// A subcommand: the arguments every case gets (bounding the work: tiny models, few steps),
/// and the flags a case may add, each with its candidate values (None: a switch).
struct Spec {
    cmd: Vec<String>,
    base: Vec<(String, Option<String>)>,
    flags: Vec<(&'static str, Vec<Option<&'static str>>)>,
}

fn s(v: &str) -> Option<&'static str> {
    Some(Box::leak(v.to_string().into_boxed_str()))
}

fn specs(fx: &Fixtures) -> Vec<Spec> {
    let p = |x: &Path| x.display().to_string();
    let sched: Vec<(&'static str, Vec<Option<&'static str>>)> = vec![
        (
            "--schedule",
            vec![s("linear"), s("cosine"), s("squaredcos_cap_v2"), s("bogus")],
        ),
        (
            "--timesteps",
            vec![s("1"), s("2"), s("50"), s("0"), s("100001"), s("x")],
        ),
        ("--beta-start", vec![s("1e-4"), s("0.5"), s("-1"), s("nan")]),
        ("--beta-end", vec![s("0.02"), s("2"), s("0")]),
        ("--zero-snr", vec![None]),
        (
            "--betas",
            vec![
                s(&p(&fx.betas)),
                s("/dev/zero"),
                s("/no/betas.csv"),
                s(&p(&fx.input)),
            ],
        ),
    ];
    let outs = vec![
        s("out.png"),
        s("/dev/null"),
        s("."),
        s("missing/x.png"),
        s("in.png"),
    ];
    let mut noise_flags = vec![
        (
            "--t",
            vec![
                s("0"),
                s("999"),
                s("1000"),
                s("1,2,3"),
                s(""),
                s("x"),
                s("-1"),
            ],
        ),
        ("--panels", vec![s("0"), s("1"), s("4"), s("101")]),
        ("--steps", vec![s("3")]),
        ("--size", vec![s("0"), s("8"), s("24"), s("5000")]),
        ("-o", outs.clone()),
        ("--gif", vec![s("out.gif"), s("out.png"), s("/dev/null")]),
        ("--gif-frames", vec![s("0"), s("2"), s("1001")]),
        ("--save-tensors", vec![s("x.safetensors"), s("in.png")]),
        ("--seed", vec![s("0"), s("18446744073709551615"), s("-3")]),
        ("--device", vec![s("cpu"), s("cpu:5"), s("tpu"), s("cuda")]),
    ];
    noise_flags.extend(sched.clone());
    let mut schedule_flags = vec![
        ("--format", vec![s("table"), s("csv"), s("json"), s("xml")]),
        ("--at", vec![s("0"), s("999"), s("1000"), s("-1")]),
        (
            "--plot",
            vec![None, s("fig.png"), s("fig.svg"), s("fig.txt")],
        ),
        (
            "-o",
            vec![
                s("fig.png"),
                s("fig.svg"),
                s("/dev/null"),
                s("missing/f.png"),
            ],
        ),
        (
            "--compare",
            vec![s("linear,cosine"), s("linear,bogus"), s("sigmoid")],
        ),
    ];
    schedule_flags.extend(sched.clone());
    let mut train_flags = vec![
        ("--train-steps", vec![s("0"), s("1"), s("2")]),
        ("--epochs", vec![s("0"), s("1")]),
        ("--batch-size", vec![s("0"), s("8"), s("100000")]),
        ("--lr", vec![s("0"), s("-1"), s("1e-3"), s("inf")]),
        ("--warmup", vec![s("0"), s("5")]),
        ("--lr-schedule", vec![s("constant"), s("cosine"), s("step")]),
        (
            "--prediction",
            vec![s("epsilon"), s("v"), s("sample"), s("x0")],
        ),
        (
            "--loss-weighting",
            vec![s("none"), s("min-snr-5"), s("heavy")],
        ),
        ("--ema-decay", vec![s("0"), s("0.9"), s("1"), s("-0.5")]),
        ("--grad-clip", vec![s("0"), s("1"), s("-1"), s("nan")]),
        ("--seed", vec![s("1")]),
        ("--sample-every", vec![s("0"), s("1")]),
        ("--checkpoint-every", vec![s("0"), s("1")]),
        ("--log-every", vec![s("0"), s("1")]),
        ("--num", vec![s("0"), s("1"), s("10001")]),
        ("--hflip", vec![None, s("false"), s("maybe")]),
        ("--no-hflip", vec![None]),
        ("--limit", vec![s("0"), s("8"), s("16")]),
        ("--resume", vec![None]),
        ("--force", vec![None]),
        (
            "--dataset",
            vec![s("mnist"), s("cifar10"), s("/no/such"), s("in.png")],
        ),
        ("--data-dir", vec![s("/no/such/dir"), s("empty")]),
        (
            "--model-config",
            vec![s("cifar10"), s(&p(&fx.input)), s("/no/config.json")],
        ),
        ("-o", vec![s("run"), s("in.png"), s("/dev/null")]),
        ("--device", vec![s("cpu:1"), s("metal")]),
    ];
    train_flags.extend(sched.clone());
    let sample_flags = vec![
        (
            "--model",
            vec![
                s(&p(&fx.model)),
                s("/no/model"),
                s("in.png"),
                s("owner/name"),
                s("empty"),
            ],
        ),
        (
            "--sampler",
            vec![
                s("ddpm"),
                s("DDIM"),
                s("dpm-solver++"),
                s("DPMSolverMultistepScheduler"),
                s("euler"),
            ],
        ),
        ("--steps", vec![s("0"), s("1"), s("3"), s("1001")]),
        ("--eta", vec![s("0"), s("0.5"), s("2"), s("-1"), s("nan")]),
        (
            "--timestep-spacing",
            vec![s("leading"), s("trailing"), s("linspace"), s("random")],
        ),
        (
            "--prediction",
            vec![s("epsilon"), s("v-prediction"), s("sample")],
        ),
        ("--clip-sample", vec![None]),
        ("--num", vec![s("0"), s("1"), s("3"), s("10000001")]),
        ("--batch-size", vec![s("0"), s("1"), s("2"), s("999")]),
        ("--seed", vec![s("7"), s("x")]),
        ("-o", outs.clone()),
        ("--gif", vec![s("t.gif"), s("/dev/null")]),
        ("--gif-frames", vec![s("0"), s("1"), s("1001")]),
        ("--save-tensors", vec![s("t.safetensors"), s(".")]),
        ("--device", vec![s("cpu"), s("cpu:2"), s("cuda:0")]),
        ("--init", vec![s("in.png"), s("/no/in.png"), s("empty")]),
        ("--strength", vec![s("0.5"), s("0"), s("1.5")]),
        (
            "--mask",
            vec![s("left"), s("center"), s("in.png"), s("/no/mask.png")],
        ),
        ("--jump-length", vec![s("1"), s("0"), s("2"), s("100")]),
        ("--jump-n-sample", vec![s("1"), s("2"), s("0"), s("101")]),
        ("--class", vec![s("3"), s("all")]),
        ("--guidance", vec![s("1"), s("2"), s("nan")]),
        (
            "--trace",
            vec![s("tr.png"), s("in.png"), s("/dev/null"), s(".")],
        ),
        ("--trace-steps", vec![s("0"), s("1"), s("3"), s("101")]),
        // f16 is left out: on the CPU it is 13x slower, and tested on its own.
        ("--dtype", vec![s("f32"), s("bf16"), s("half")]),
    ];
    // invert and interpolate share their flags.
    let edit_flags = |out_flag: &'static str| -> Vec<(&'static str, Vec<Option<&'static str>>)> {
        vec![
            (
                "--model",
                vec![s(&p(&fx.model)), s("/no/model"), s("in.png")],
            ),
            ("--steps", vec![s("0"), s("1"), s("3"), s("1001")]),
            ("--refine", vec![s("0"), s("2"), s("21"), s("x")]),
            ("--class", vec![s("3"), s("all")]),
            ("--guidance", vec![s("1"), s("2"), s("nan")]),
            ("-o", outs.clone()),
            (
                out_flag,
                vec![s("r.png"), s("in.png"), s("/dev/null"), s(".")],
            ),
            ("--device", vec![s("cpu"), s("cuda:0")]),
        ]
    };
    let mut interpolate_flags = edit_flags("--gif");
    interpolate_flags.push(("--frames", vec![s("1"), s("2"), s("65"), s("x")]));
    // Named sets, an empty folder, a missing path and a folder of images.
    let datasets = vec![
        s("mnist"),
        s("fashion-mnist"),
        s("cifar10"),
        s("empty"),
        s("/nonexistent"),
        s(&p(&fx.images)),
    ];
    let data_flags = vec![
        ("--dataset", datasets.clone()),
        ("-n", vec![s("0"), s("1"), s("9"), s("10001")]),
        ("--split", vec![s("train"), s("test"), s("dev")]),
        ("--size", vec![s("0"), s("8"), s("5000")]),
        ("--channels", vec![s("1"), s("2"), s("3")]),
        ("--hflip", vec![None, s("true")]),
        ("--no-hflip", vec![None]),
        ("--limit", vec![s("0"), s("5")]),
        ("--data-dir", vec![s("empty"), s("/no/such")]),
        ("-o", vec![s("g.png"), s("/dev/null"), s("."), s("in.png")]),
        ("--seed", vec![s("3")]),
    ];
    let ms = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let kv = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
    vec![
        Spec {
            cmd: ms(&["schedule"]),
            base: vec![],
            flags: schedule_flags,
        },
        Spec {
            cmd: ms(&["noise"]),
            base: vec![("in.png".into(), None)],
            flags: noise_flags,
        },
        Spec {
            cmd: ms(&["train"]),
            base: vec![
                kv(
                    "--model-config",
                    &p(&common::data_path("tiny28/config.json")),
                ),
                kv("--train-steps", "2"),
                kv("--batch-size", "8"),
                kv("--limit", "16"),
                kv("--num", "2"),
                kv("-o", "run"),
            ],
            flags: train_flags,
        },
        Spec {
            cmd: ms(&["sample"]),
            base: vec![
                kv("--model", &p(&fx.model)),
                kv("--steps", "2"),
                kv("--num", "2"),
            ],
            flags: sample_flags,
        },
        Spec {
            cmd: ms(&["invert"]),
            base: vec![
                ("in.png".into(), None),
                kv("--model", &p(&fx.model)),
                kv("--steps", "2"),
                kv("--refine", "1"),
                kv("-o", "l.safetensors"),
            ],
            flags: edit_flags("--reconstruction"),
        },
        Spec {
            cmd: ms(&["interpolate"]),
            base: vec![
                ("in.png".into(), None),
                ("in.png".into(), None),
                kv("--model", &p(&fx.model)),
                kv("--steps", "2"),
                kv("--refine", "0"),
                kv("--frames", "3"),
            ],
            flags: interpolate_flags,
        },
        Spec {
            cmd: ms(&["data", "show"]),
            base: vec![kv("-n", "4")],
            flags: data_flags,
        },
        Spec {
            cmd: ms(&["inspect"]),
            base: vec![],
            flags: vec![],
        },
        Spec {
            cmd: ms(&["eval"]),
            base: vec![(p(&fx.samples), None)],
            flags: vec![
                ("--dataset", datasets),
                (
                    "--features",
                    vec![s(&p(&fx.betas)), s("/no/f.safetensors"), s("in.png")],
                ),
                ("-n", vec![s("0"), s("2"), s("100001")]),
                ("--json", vec![None]),
                ("--model", vec![s(&p(&fx.model)), s("/no/model")]),
                ("--train-features", vec![None]),
                ("--loss-by-t", vec![None]),
                ("--epochs", vec![s("0"), s("1")]),
                ("--buckets", vec![s("0"), s("3")]),
                ("-o", vec![s("x.png"), s("/dev/null"), s(".")]),
            ],
        },
    ]
}

struct Fixtures {
    input: PathBuf,
    samples: PathBuf,
    betas: PathBuf,
    model: PathBuf,
    images: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixtures() -> Fixtures {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sample.png");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.png"),
        &input,
    )
    .unwrap();
    let betas = dir.path().join("betas.csv");
    std::fs::write(&betas, "beta\n0.001\n0.01\n0.1\n").unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(&input, images.join("a.png")).unwrap();
    // Eight real digits as a samples file.
    let samples = dir.path().join("samples.safetensors");
    let ds = diffuse::data::load(&diffuse::data::DataConfig {
        dataset: "mnist".into(),
        data_dir: dir.path().join("none"),
        limit: Some(8),
        ..Default::default()
    })
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("samples".to_string(), ds.images)]),
        &samples,
    )
    .unwrap();
    Fixtures {
        input,
        samples,
        betas,
        model: common::data_path("unet_tiny"),
        images,
        _dir: dir,
    }
}

#[test]
fn random_flag_combinations_never_panic_or_leave_partial_outputs() {
    let cases: usize = std::env::var("DIFFUSE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let fx = fixtures();
    let specs = specs(&fx);
    let inspect_targets = [
        common::data_path("unet_tiny").display().to_string(),
        "mnist".into(),
        "cifar10".into(),
        "/nonexistent".into(),
        fx.input.display().to_string(),
        common::data_path("tiny28/config.json")
            .display()
            .to_string(),
    ];
    let seed = std::env::var("DIFFUSE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261127);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let hf_home = tempfile::tempdir().unwrap();
    let mut codes = [0usize; 3];
    for case in 0..cases {
        let spec = &specs[rng.random_range(0..specs.len())];
        let mut args: Vec<(String, Option<String>)> = spec.base.clone();
        if spec.cmd[0] == "inspect" {
            args.push((
                inspect_targets[rng.random_range(0..inspect_targets.len())].clone(),
                None,
            ));
        }
        let k = if spec.flags.is_empty() {
            0
        } else {
            rng.random_range(0..=4)
        };
        for _ in 0..k {
            let (flag, values) = &spec.flags[rng.random_range(0..spec.flags.len())];
            let v = values[rng.random_range(0..values.len())].map(str::to_string);
            // A flag drawn again replaces the base's (clap refuses most repeats anyway).
            args.retain(|(f, _)| f != flag);
            args.push((flag.to_string(), v));
        }
        if rng.random_bool(0.05) {
            args.push(("--no-such-flag".into(), None));
        }
        let mut argv: Vec<String> = spec.cmd.clone();
        for (f, v) in &args {
            argv.push(f.clone());
            argv.extend(v.clone());
        }

        let work = tempfile::tempdir().unwrap();
        std::fs::copy(&fx.input, work.path().join("in.png")).unwrap();
        std::fs::create_dir(work.path().join("empty")).unwrap();
        let before = common::snapshot(work.path());
        let in_bytes = std::fs::read(work.path().join("in.png")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(&argv)
            .current_dir(work.path())
            .env_remove("RUST_LOG")
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", hf_home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let what = format!("case {case}: diffuse {}", argv.join(" "));
        assert!(!err.contains("panicked"), "{what}: {err}");
        let code = out.status.code();
        assert!(matches!(code, Some(0..=2)), "{what}: exit {code:?}: {err}");
        codes[code.unwrap() as usize] += 1;
        if code != Some(0) {
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
            assert_eq!(
                before,
                common::snapshot(work.path()),
                "{what}: left outputs: {err}"
            );
        }
        // in.png is the input of noise, invert and interpolate; other commands may be told
        // to write over it.
        if ["noise", "invert", "interpolate"].contains(&spec.cmd[0].as_str()) {
            assert_eq!(
                in_bytes,
                std::fs::read(work.path().join("in.png")).unwrap(),
                "{what}: changed its input"
            );
        }
        assert!(std::fs::metadata("/dev/null")
            .map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
            .unwrap());
    }
    println!(
        "{cases} cases: exit 0: {}, 1: {}, 2: {}",
        codes[0], codes[1], codes[2]
    );
    // The table must exercise all three outcomes, or it tests too little.
    assert!(codes.iter().all(|&c| c > 0), "{codes:?}");
}
