//! diffusers' scheduler_config.json (DDPMScheduler, DDIMScheduler,
//! DPMSolverMultistepScheduler keys; unknown keys ignored), read and written.
//! Missing keys take diffusers' defaults.
use super::types::{PredictionType, SamplerKind, TimestepSpacing, VarianceType};
use crate::core::schedule::{BetaSchedule, ScheduleConfig};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// diffusers name: linear, scaled_linear, squaredcos_cap_v2, sigmoid.
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variance_type: Option<VarianceType>,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    /// None: diffusers' per-class default (leading for DDPM/DDIM, linspace for DPM-Solver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    /// DDIM: alpha_bar before t = 0 is 1 (else alpha_bar[0]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_alpha_to_one: Option<bool>,
    // DPM-Solver keys (absent from DDPM/DDIM configs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_order: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_order_final: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub euler_at_final: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_sigmas_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_karras_sigmas: Option<bool>,
    /// None or -Infinity: no clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_min_clipped: Option<f64>,
    // UniPC / PNDM / Euler keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predict_x0: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_corrector: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_prk_steps: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpolation_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_exponential_sigmas: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_beta_sigmas: Option<bool>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: "DDPMScheduler".into(),
            diffusers_version: None,
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            variance_type: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: None,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            set_alpha_to_one: None,
            solver_order: None,
            algorithm_type: None,
            solver_type: None,
            lower_order_final: None,
            euler_at_final: None,
            final_sigmas_type: None,
            use_karras_sigmas: None,
            lambda_min_clipped: None,
            predict_x0: None,
            disable_corrector: None,
            skip_prk_steps: None,
            interpolation_type: None,
            timestep_type: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
        }
    }
}

/// Python's json writes bare Infinity / NaN (e.g. `"lambda_min_clipped": -Infinity`), which
/// is not JSON; such values become null, which every key here reads as its default.
pub fn sanitize_python_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else {
            let tok = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(t) = tok {
                out.push_str("null");
                rest = &rest[t.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl SchedulerConfig {
    /// The DDPMScheduler config `diffuse train` writes beside a checkpoint.
    pub fn ddpm(schedule: &ScheduleConfig, prediction: PredictionType) -> Self {
        let (start, end) = schedule.beta_range();
        Self {
            class_name: SamplerKind::Ddpm.diffusers_class().into(),
            num_train_timesteps: schedule
                .betas
                .as_ref()
                .map_or(schedule.timesteps, |b| b.len()),
            beta_start: start,
            beta_end: end,
            beta_schedule: schedule.schedule.diffusers_name().into(),
            trained_betas: schedule.betas.clone(),
            variance_type: Some(VarianceType::FixedSmall),
            prediction_type: prediction,
            timestep_spacing: Some(TimestepSpacing::Leading),
            rescale_betas_zero_snr: schedule.zero_snr,
            ..Self::default()
        }
    }

    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(&sanitize_python_json(text))
    }

    pub fn load(path: &Path) -> Result<Self> {
        // A config is a few KB; trained_betas of MAX_TIMESTEPS rows stay under 4 MB.
        let text = crate::io::input::read_text(path, 4 << 20)?;
        Self::from_json(&text).map_err(|e| Error::format(path, e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("scheduler config serialises")
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::output::write_bytes_atomic(path, (self.to_json() + "\n").as_bytes())
    }

    /// The beta schedule this config describes.
    pub fn schedule_config(&self) -> Result<ScheduleConfig> {
        let schedule = BetaSchedule::parse(&self.beta_schedule).map_err(|_| {
            Error::invalid(format!(
                "unsupported beta_schedule '{}' (expected linear, scaled_linear, squaredcos_cap_v2, sigmoid or quadratic)",
                self.beta_schedule
            ))
        })?;
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(Error::invalid(format!(
                    "trained_betas has {} entries but num_train_timesteps is {}",
                    b.len(),
                    self.num_train_timesteps
                )));
            }
        }
        Ok(ScheduleConfig {
            schedule,
            timesteps: self.num_train_timesteps,
            beta_start: Some(self.beta_start),
            beta_end: Some(self.beta_end),
            zero_snr: self.rescale_betas_zero_snr,
            betas: self.trained_betas.clone(),
            ..ScheduleConfig::default()
        })
    }

    /// timestep_spacing, or diffusers' default for `kind`'s class.
    pub fn spacing_for(&self, kind: SamplerKind) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(match kind {
            SamplerKind::Ddpm | SamplerKind::Ddim | SamplerKind::Pndm => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        })
    }

    /// The sampler `_class_name` names (DDIM when it names none we have).
    pub fn sampler_kind(&self) -> Option<SamplerKind> {
        SamplerKind::from_class(
            &self.class_name,
            self.solver_order,
            self.algorithm_type.as_deref(),
        )
    }

    pub fn clip_range(&self) -> Option<f64> {
        self.clip_sample.then_some(self.clip_sample_range)
    }

    /// Refuse settings we do not implement, with one line naming the key.
    pub fn check_supported(&self, kind: SamplerKind) -> Result<()> {
        let bad = |k: &str, v: &dyn std::fmt::Debug| {
            Err(Error::invalid(format!(
                "scheduler config: {k} = {v:?} is not supported"
            )))
        };
        if self.thresholding {
            return bad("thresholding", &true);
        }
        if self.clip_sample && self.clip_sample_range <= 0.0 {
            return bad("clip_sample_range", &self.clip_sample_range);
        }
        let multistep = matches!(
            kind,
            SamplerKind::DpmSolverPP
                | SamplerKind::DpmSolverPP3M
                | SamplerKind::DpmSolverSde
                | SamplerKind::UniPc
                | SamplerKind::Deis
        );
        if multistep
            && !matches!(
                self.final_sigmas_type.as_deref(),
                None | Some("zero") | Some("sigma_min")
            )
        {
            return bad("final_sigmas_type", &self.final_sigmas_type);
        }
        match kind {
            // The sampler's name fixes the DPM-Solver order and algorithm.
            SamplerKind::DpmSolverPP | SamplerKind::DpmSolverPP3M | SamplerKind::DpmSolverSde
                if !matches!(self.solver_type.as_deref(), None | Some("midpoint")) =>
            {
                return bad("solver_type", &self.solver_type);
            }
            SamplerKind::UniPc => {
                if !matches!(self.solver_order, None | Some(1) | Some(2) | Some(3)) {
                    return bad("solver_order", &self.solver_order);
                }
                if !matches!(
                    self.solver_type.as_deref(),
                    None | Some("bh1") | Some("bh2")
                ) {
                    return bad("solver_type", &self.solver_type);
                }
                if self.predict_x0 == Some(false) {
                    return bad("predict_x0", &false);
                }
            }
            SamplerKind::Deis => {
                if !matches!(self.solver_order, None | Some(1) | Some(2)) {
                    return bad("solver_order", &self.solver_order);
                }
                if !matches!(self.algorithm_type.as_deref(), None | Some("deis")) {
                    return bad("algorithm_type", &self.algorithm_type);
                }
            }
            SamplerKind::Pndm if self.prediction_type == PredictionType::Sample => {
                return Err(Error::invalid(
                    "pndm supports epsilon and v_prediction models only (as diffusers); choose another --sampler",
                ));
            }
            SamplerKind::Euler | SamplerKind::Heun => {
                if self.use_exponential_sigmas == Some(true) {
                    return bad("use_exponential_sigmas", &true);
                }
                if self.use_beta_sigmas == Some(true) {
                    return bad("use_beta_sigmas", &true);
                }
                if !matches!(self.interpolation_type.as_deref(), None | Some("linear")) {
                    return bad("interpolation_type", &self.interpolation_type);
                }
                if !matches!(self.timestep_type.as_deref(), None | Some("discrete")) {
                    return bad("timestep_type", &self.timestep_type);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_python_json_with_infinity_and_unknown_keys() {
        let text = r#"{"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2",
            "lambda_min_clipped": -Infinity, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
            "variance_type": null, "some_new_key": [1, 2], "note": "NaN stays a string"}"#;
        let c = SchedulerConfig::from_json(text).unwrap();
        assert_eq!(c.lambda_min_clipped, None);
        assert_eq!(c.prediction_type, PredictionType::VPrediction);
        assert_eq!(c.timestep_spacing, Some(TimestepSpacing::Trailing));
        assert_eq!(c.variance_type, None);
        assert_eq!(c.schedule_config().unwrap().schedule, BetaSchedule::Cosine);
        assert!(c.clip_sample, "diffusers' default");
    }

    #[test]
    fn ddpm_config_round_trips() {
        let sc = ScheduleConfig::new(BetaSchedule::Cosine);
        let c = SchedulerConfig::ddpm(&sc, PredictionType::Epsilon);
        let json = c.to_json();
        assert!(
            json.contains("\"_class_name\": \"DDPMScheduler\""),
            "{json}"
        );
        assert!(json.contains("\"beta_schedule\": \"squaredcos_cap_v2\""));
        assert!(json.contains("\"variance_type\": \"fixed_small\""));
        assert!(json.contains("\"trained_betas\": null"));
        assert!(!json.contains("solver_order"));
        let back = SchedulerConfig::from_json(&json).unwrap();
        assert_eq!(back, c);
        let s = back.schedule_config().unwrap();
        assert_eq!((s.schedule, s.timesteps), (BetaSchedule::Cosine, 1000));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let c = SchedulerConfig {
            beta_schedule: "laplace".into(),
            ..Default::default()
        };
        let e = c.schedule_config().unwrap_err().to_string();
        assert!(e.contains("laplace") && !e.contains('\n'), "{e}");
        assert!(SchedulerConfig::from_json(r#"{"prediction_type": "flow"}"#).is_err());
        let c = SchedulerConfig {
            solver_type: Some("heun".into()),
            ..Default::default()
        };
        assert!(c.check_supported(SamplerKind::DpmSolverPP).is_err());
        assert!(c.check_supported(SamplerKind::UniPc).is_err());
        assert!(c.check_supported(SamplerKind::Ddim).is_ok());
    }
}
