//! The precision a model computes in for inference (`sample --dtype`). Training stays f32.
use candle_core::DType;
use serde::{Deserialize, Serialize};

/// f32, or the weights cast to bf16 or f16 on load; the schedule and sampler math stay f32/f64
/// either way (the model's input and output are f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}
