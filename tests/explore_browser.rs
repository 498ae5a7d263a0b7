//! `diffuse explore` in a real browser: headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it) loads the page with a test driver appended, which picks each schedule, sets
//! T, the beta range and zero-SNR, moves the t slider, and reports the page's numbers, its
//! alpha_bar table, its x_t before quantisation and the canvas pixels. They must equal
//! `diffuse schedule`'s alpha_bar within 1e-12 relative, `diffuse noise --save-tensors`'s x_t
//! within 1e-6, and its grey levels within one.
mod common;
use candle_core::Device;
use diffuse::core::schedule::{BetaSchedule, Schedule, ScheduleConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

struct Case {
    kind: BetaSchedule,
    t_total: usize,
    range: Option<(f64, f64)>,
    zero_snr: bool,
    t: usize,
}

fn cases() -> Vec<Case> {
    let c = |kind, t_total, range, zero_snr, t| Case {
        kind,
        t_total,
        range,
        zero_snr,
        t,
    };
    vec![
        c(BetaSchedule::Linear, 1000, None, false, 500),
        c(BetaSchedule::ScaledLinear, 1000, None, false, 999),
        c(BetaSchedule::Cosine, 1000, None, false, 0),
        c(BetaSchedule::Sigmoid, 500, Some((1e-4, 0.03)), false, 250),
        c(BetaSchedule::Quadratic, 200, Some((2e-4, 0.05)), true, 100),
        c(BetaSchedule::Linear, 1000, None, true, 999),
        c(BetaSchedule::Cosine, 50, None, true, 25),
    ]
}

fn config(c: &Case) -> ScheduleConfig {
    ScheduleConfig {
        timesteps: c.t_total,
        beta_start: c.range.map(|r| r.0),
        beta_end: c.range.map(|r| r.1),
        zero_snr: c.zero_snr,
        ..ScheduleConfig::new(c.kind)
    }
}

/// The driver appended to the page: runs every case through the controls, reports as JSON.
fn driver(cases: &[Case]) -> String {
    let js: Vec<String> = cases
        .iter()
        .map(|c| {
            let (s, e) = config(c).beta_range();
            format!(
                "{{kind: {:?}, T: {}, start: {s:?}, end: {e:?}, zeroSnr: {}, t: {}}}",
                c.kind.name(),
                c.t_total,
                c.zero_snr,
                c.t
            )
        })
        .collect();
    format!(
        r#"<script>
(function () {{
  const $ = (id) => document.getElementById(id);
  const fire = (id, type) => $(id).dispatchEvent(new Event(type));
  const out = [];
  for (const c of [{cases}]) {{
    $("schedule").value = c.kind; fire("schedule", "change");
    $("T").value = String(c.T);
    $("beta-start").value = String(c.start);
    $("beta-end").value = String(c.end);
    $("zero-snr").checked = c.zeroSnr;
    fire("T", "change");
    $("t").value = String(c.t); fire("t", "input");
    const canvas = $("xt");
    const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const rgb = [];
    for (let i = 0; i < px.length; i += 4) rgb.push(px[i], px[i + 1], px[i + 2]);
    const num = (id) => Number($(id).dataset.value);
    out.push({{
      error: $("error").hidden ? null : $("error").textContent,
      t: window.explore.state.t, shownT: Number($("t-value").textContent),
      alphaBar: window.explore.state.table.alphaBar,
      ab: num("v-ab"), a: num("v-sqrt-ab"), b: num("v-sqrt-1m"), beta: num("v-beta"),
      formula: $("formula").textContent,
      xt: Array.from(window.explore.state.xt), w: canvas.width, h: canvas.height, rgb,
    }});
  }}
  const pre = document.createElement("pre");
  pre.id = "report";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}})();
</script>"#,
        cases = js.join(", ")
    )
}

fn diffuse(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page's DOM after its scripts ran, from headless Chromium.
fn dump_dom(page: &Path, profile: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does"
    );
    let url = format!("file://{}", page.display());
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_page_agrees_with_schedule_and_noise() {
    let dir = tempfile::tempdir().unwrap();
    let img: PathBuf = dir.path().join("sample.png");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.png"),
        &img,
    )
    .unwrap();
    let page = dir.path().join("explore.html");
    diffuse(&[
        "explore",
        img.to_str().unwrap(),
        "--seed",
        "7",
        "--size",
        "32",
        "-o",
        page.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing fetched from anywhere.
    for needle in ["http://", "https://", "src=", "<link"] {
        assert!(!html.contains(needle), "the page refers out: {needle}");
    }
    let cases = cases();
    let driven = dir.path().join("driven.html");
    std::fs::write(
        &driven,
        html.replace("</body>", &format!("{}\n</body>", driver(&cases))),
    )
    .unwrap();
    let dom = dump_dom(&driven, &dir.path().join("profile"));
    let json = dom
        .split("<pre id=\"report\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| {
            panic!(
                "no report in the page's DOM:\n{}",
                &dom[..dom.len().min(2000)]
            )
        })
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let report: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(report.len(), cases.len());
    for (c, r) in cases.iter().zip(&report) {
        let name = format!(
            "{} T={} zero-snr={} t={}",
            c.kind.name(),
            c.t_total,
            c.zero_snr,
            c.t
        );
        assert!(r["error"].is_null(), "{name}: {}", r["error"]);
        assert_eq!(r["t"], c.t, "{name}");
        assert_eq!(r["shownT"], c.t, "{name}");
        // The schedule: every alpha_bar within 1e-12 relative of `diffuse schedule`'s.
        let want = Schedule::new(&config(c)).unwrap();
        let got: Vec<f64> = r["alphaBar"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), c.t_total, "{name}");
        let worst = got
            .iter()
            .zip(&want.alpha_bar)
            .map(|(g, w)| {
                if *w == 0.0 {
                    g.abs()
                } else {
                    ((g - w) / w).abs()
                }
            })
            .fold(0.0, f64::max);
        println!("{name}: alpha_bar max relative difference {worst:.1e}");
        assert!(worst <= 1e-12, "{name}: {worst}");
        let row = want.row(c.t);
        assert!(
            (r["ab"].as_f64().unwrap() - row.alpha_bar).abs() <= 1e-12 * row.alpha_bar.max(1e-300)
                || row.alpha_bar == 0.0
        );
        assert!((r["a"].as_f64().unwrap() - row.sqrt_alpha_bar).abs() <= 1e-12);
        assert!((r["b"].as_f64().unwrap() - row.sqrt_one_minus_alpha_bar).abs() <= 1e-12);
        assert!((r["beta"].as_f64().unwrap() - row.beta).abs() <= 1e-12 * row.beta);
        assert!(r["formula"]
            .as_str()
            .unwrap()
            .starts_with(&format!("x_{} = ", c.t)));

        // The image: `diffuse noise` for the same image, t, schedule and seed.
        let st = dir.path().join("n.safetensors");
        let mut args = vec![
            "noise".to_string(),
            img.display().to_string(),
            "--t".into(),
            c.t.to_string(),
            "--seed".into(),
            "7".into(),
            "--size".into(),
            "32".into(),
            "--schedule".into(),
            c.kind.name().into(),
            "--timesteps".into(),
            c.t_total.to_string(),
            "-o".into(),
            dir.path().join("n.png").display().to_string(),
            "--save-tensors".into(),
            st.display().to_string(),
        ];
        if let Some((s, e)) = c.range {
            args.extend(["--beta-start".into(), s.to_string()]);
            args.extend(["--beta-end".into(), e.to_string()]);
        }
        if c.zero_snr {
            args.push("--zero-snr".into());
        }
        std::fs::remove_file(&st).ok();
        std::fs::remove_file(dir.path().join("n.png")).ok();
        diffuse(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let xt: Vec<f32> = candle_core::safetensors::load(&st, &Device::Cpu).unwrap()["x_t"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let page_xt: Vec<f64> = r["xt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(page_xt.len(), xt.len(), "{name}");
        let dx = page_xt
            .iter()
            .zip(&xt)
            .map(|(p, x)| (p - *x as f64).abs())
            .fold(0.0, f64::max);
        // The canvas: x_t quantised as our PNGs are, within one grey level.
        let (w, h) = (
            r["w"].as_u64().unwrap() as usize,
            r["h"].as_u64().unwrap() as usize,
        );
        assert_eq!((w, h), (32, 32), "{name}");
        let rgb: Vec<i64> = r["rgb"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let level = |x: f32| ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as i64;
        let mut dg = 0;
        for y in 0..h {
            for x in 0..w {
                for k in 0..3 {
                    let want = level(xt[k * h * w + y * w + x]);
                    dg = dg.max((rgb[(y * w + x) * 3 + k] - want).abs());
                }
            }
        }
        println!("{name}: x_t max difference {dx:.1e}, canvas {dg} grey levels");
        assert!(dx <= 1e-6, "{name}: {dx}");
        assert!(dg <= 1, "{name}: {dg}");
    }
}

#[test]
fn bad_settings_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("e.html");
    for (args, needle) in [
        (vec!["--size", "0"], "--size"),
        (vec!["--size", "257"], "--size"),
        (vec!["--t", "1000"], "out of range"),
        (vec!["--timesteps", "1"], "T >= 2"),
        (vec!["/no/such.png"], "/no/such.png"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .arg("explore")
            .args(&args)
            .arg("-o")
            .arg(&o)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let (c, msg) = common::one_line_failure(out, needle);
        assert_ne!(c, 0);
        assert!(msg.contains(needle), "{args:?}: {msg}");
        assert!(!o.exists());
    }
}
