//! Every schedule against diffusers: the float64 re-derivation within 1e-12 absolute, and
//! diffusers' own float32 tables within the differences that file's header states.
mod common;
use common::read_schedule_csv;
use diffuse::core::schedule::{BetaSchedule, Schedule, ScheduleConfig};

fn ours(name: &str) -> Schedule {
    let cfg = match name {
        "linear" => ScheduleConfig::new(BetaSchedule::Linear),
        "scaled_linear" => ScheduleConfig::new(BetaSchedule::ScaledLinear),
        "squaredcos_cap_v2" | "ddp_cosine" => ScheduleConfig::new(BetaSchedule::Cosine),
        "sigmoid" => ScheduleConfig::new(BetaSchedule::Sigmoid),
        "linear_zero_snr" => ScheduleConfig {
            zero_snr: true,
            ..ScheduleConfig::new(BetaSchedule::Linear)
        },
        "ddp_linear" => ScheduleConfig::new(BetaSchedule::Linear),
        other => panic!("unknown golden schedule {other}"),
    };
    Schedule::new(&cfg).unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn schedules_match_f64_golden_within_1e12() {
    let (golden, _) = read_schedule_csv("schedules_f64.csv");
    assert_eq!(golden.len(), 5);
    for (name, (betas, abar)) in &golden {
        let s = ours(name);
        let db = max_diff(&s.betas, betas);
        let da = max_diff(&s.alpha_bar, abar);
        println!("{name}: max |beta diff| {db:.3e}, max |alpha_bar diff| {da:.3e}");
        assert!(db <= 1e-12, "{name}: beta differs by {db}");
        assert!(da <= 1e-12, "{name}: alpha_bar differs by {da}");
    }
}

#[test]
fn schedules_match_diffusers_f32_within_stated_differences() {
    let (golden, _) = read_schedule_csv("schedules.csv");
    let (_, header) = read_schedule_csv("schedules_f64.csv");
    // Header lines: "#   linear: <max |beta diff|> <max |abar diff|> <max rel abar diff>".
    let mut checked = 0;
    for line in &header {
        let body = line.trim_start_matches('#').trim();
        let Some((name, nums)) = body.split_once(':') else {
            continue;
        };
        let nums: Vec<f64> = nums
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if nums.len() != 3 || !golden.contains_key(name) {
            continue;
        }
        let (betas, abar) = &golden[name];
        let s = ours(name);
        // Our f64 values differ from the f64 golden by <= 1e-12 (test above), so the stated
        // f64-vs-f32 differences bound ours up to that.
        let db = max_diff(&s.betas, betas);
        let da = max_diff(&s.alpha_bar, abar);
        println!("{name}: vs float32 diffusers beta {db:.3e} (stated {:.3e}), alpha_bar {da:.3e} (stated {:.3e})", nums[0], nums[1]);
        assert!(
            db <= nums[0] * 1.001 + 1e-12,
            "{name}: beta {db} > {}",
            nums[0]
        );
        assert!(
            da <= nums[1] * 1.001 + 1e-12,
            "{name}: alpha_bar {da} > {}",
            nums[1]
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "all five diffusers schedules checked");
}

#[test]
fn cosine_and_linear_equal_denoising_diffusion_pytorch() {
    // denoising-diffusion-pytorch's cosine normalises by alpha_bar(0), which cancels in the
    // beta ratio, so it is the same schedule; its linear at T=1000 is diffusers' linear.
    let (golden, _) = read_schedule_csv("schedules.csv");
    for name in ["ddp_cosine", "ddp_linear"] {
        let (betas, abar) = &golden[name];
        let s = ours(name);
        assert!(max_diff(&s.betas, betas) < 1e-12, "{name} betas");
        assert!(max_diff(&s.alpha_bar, abar) < 1e-12, "{name} alpha_bar");
    }
}

#[test]
fn derived_columns_are_consistent() {
    let s = ours("linear");
    for t in [0usize, 1, 500, 999] {
        let r = s.row(t);
        assert_eq!(r.alpha, 1.0 - r.beta);
        assert!(
            (r.sqrt_alpha_bar.powi(2) + r.sqrt_one_minus_alpha_bar.powi(2) - 1.0).abs() < 1e-15
        );
        assert!((r.snr - r.alpha_bar / (1.0 - r.alpha_bar)).abs() < 1e-12 * r.snr.max(1.0));
        assert!((r.log_snr - r.snr.ln()).abs() < 1e-12);
        let prev = if t == 0 { 1.0 } else { s.alpha_bar[t - 1] };
        assert_eq!(r.alpha_bar_prev, prev);
        assert!((r.posterior_variance - r.beta * (1.0 - prev) / (1.0 - r.alpha_bar)).abs() < 1e-18);
    }
    assert_eq!(s.row(0).posterior_variance, 0.0);
}

#[test]
fn alpha_bar_like_diffusers_is_bit_exact_for_cosine() {
    let (golden, _) = read_schedule_csv("schedules.csv");
    let s = ours("squaredcos_cap_v2");
    let ab = s.alpha_bar_like_diffusers();
    let (_, g) = &golden["squaredcos_cap_v2"];
    for t in 0..1000 {
        assert_eq!(ab[t] as f32, g[t] as f32, "t = {t}");
    }
    // Linspace-based schedules: within one f32 ulp-level of diffusers (torch's f32 linspace
    // rounds some betas differently).
    let (_, g) = &golden["linear"];
    let ab = ours("linear").alpha_bar_like_diffusers();
    for t in 0..1000 {
        assert!(((ab[t] - g[t]) / g[t]).abs() < 1e-6, "t = {t}");
    }
}
