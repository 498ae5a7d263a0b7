//! Steering a loaded model: the class each sample is drawn toward and the classifier-free
//! guidance scale, resolved from a request against the model's classes.json, and the model
//! as a `sampler::Model` for one batch (guided toward its labels, or plain when the model is
//! unconditional). Sampling and every editing command share it.
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use crate::pipeline::{Classes, ModelLocation};
use crate::sampler::{guidance, Model};
use crate::unet::UNet2DModel;
use candle_core::{Device, Tensor};

/// Guidance for class-conditional models with a null class when none is given: on the
/// default class-conditional MNIST model, 100 samples per class are read as the class asked
/// for 83% of the time at w = 1, 96% at 2, 97% at 4 (README, "Steering").
pub const DEFAULT_GUIDANCE: f64 = 4.0;

/// What a conditional model does for samples without `--class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoClass {
    /// Classes drawn uniformly (sampling).
    Uniform,
    /// The null class, i.e. the unconditional model (inversion, interpolation); models
    /// without a null class need `--class`.
    Null,
}

/// Class labels and guidance for a class-conditional model.
pub struct Conditioning {
    pub classes: Classes,
    /// A fixed class, or all in order (None with `all`), or random (both false).
    pub fixed: Option<u32>,
    pub all: bool,
    pub null: Option<u32>,
}

impl Conditioning {
    /// The conditioning `class` (a name, an index or "all") and `guidance` ask for, on a model
    /// with `embeds` class embeddings (None: unconditional, which refuses both).
    pub fn new(
        class: Option<&str>,
        guidance: &[f64],
        loc: &ModelLocation,
        embeds: Option<usize>,
        none: NoClass,
    ) -> Result<Option<Self>> {
        let Some(k) = embeds else {
            if class.is_some() || guidance.iter().any(|w| *w != 1.0) {
                return Err(Error::invalid(
                    "--class and --guidance need a class-conditional model (num_class_embeds); this one is unconditional",
                ));
            }
            return Ok(None);
        };
        let classes = loc.classes(k)?;
        let null = classes.null_class.map(|n| n as u32);
        if null.is_none() && guidance.iter().any(|w| *w != 1.0) {
            return Err(Error::invalid(
                "guidance other than 1 needs a null class (classes.json null_class, from training with --cond-drop); this model has none",
            ));
        }
        let (fixed, all) = match (class, none) {
            (None, NoClass::Uniform) => {
                tracing::info!(
                    "no --class: classes drawn uniformly ({})",
                    classes.names.join(", ")
                );
                (None, false)
            }
            (None, NoClass::Null) => match null {
                Some(n) => {
                    tracing::info!("no --class: the null class (the unconditional model)");
                    (Some(n), false)
                }
                None => {
                    return Err(Error::invalid(
                        "this class-conditional model has no null class: give --class",
                    ))
                }
            },
            (Some(c), NoClass::Null) if c.eq_ignore_ascii_case("all") => {
                return Err(Error::invalid(
                    "--class all draws one row per class; editing takes one class",
                ))
            }
            (Some(c), _) if c.eq_ignore_ascii_case("all") => (None, true),
            (Some(c), _) => (Some(classes.resolve(c)?), false),
        };
        Ok(Some(Self {
            classes,
            fixed,
            all,
            null,
        }))
    }

    /// Every class in order (what `--class all` asks for), guided against `classes`' null
    /// class: training's sample grids and evaluations.
    pub fn in_order(classes: Classes) -> Self {
        let null = classes.null_class.map(|n| n as u32);
        Self {
            classes,
            fixed: None,
            all: true,
            null,
        }
    }

    /// Labels of samples `start..start + b` of `num`.
    pub fn labels(&self, start: usize, b: usize, num: usize, rng: &mut NoiseRng) -> Vec<u32> {
        let k = self.classes.names.len();
        match (self.fixed, self.all) {
            (Some(c), _) => vec![c; b],
            (None, true) => (start..start + b).map(|j| (j * k / num) as u32).collect(),
            (None, false) => rng
                .uniform_below(b, k as u64)
                .into_iter()
                .map(|v| v as u32)
                .collect(),
        }
    }
}

/// The guidance scales to run: those asked for, else `DEFAULT_GUIDANCE` for a model with a
/// null class, else 1.
pub fn scales(cond: Option<&Conditioning>, asked: &[f64], default: f64) -> Vec<f64> {
    if !asked.is_empty() {
        asked.to_vec()
    } else if cond.is_some_and(|c| c.null.is_some()) {
        tracing::info!("guidance {default} (the default for a model with a null class)");
        vec![default]
    } else {
        vec![1.0]
    }
}

/// Call `f` with `model` as a sampler's model for one batch: guided with scale `w` toward
/// `labels` when the model is conditional, else the plain model.
pub fn with_model<R>(
    model: &UNet2DModel,
    cond: Option<(&Conditioning, &[u32])>,
    w: f64,
    device: &Device,
    f: impl FnOnce(&mut Model) -> Result<R>,
) -> Result<R> {
    match cond {
        Some((c, labels)) => {
            let l = Tensor::new(labels, device)?;
            let mut cond_model =
                |x: &Tensor, t: &Tensor, l: &Tensor| model.forward_cond(x, t, Some(l), false);
            let mut g = guidance::guided(&mut cond_model, &l, c.null.unwrap_or(0), w)?;
            f(&mut g)
        }
        None => f(&mut |x: &Tensor, t: &Tensor| model.forward(x, t, false)),
    }
}
