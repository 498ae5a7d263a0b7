//! training_state.safetensors: raw weights (`model.*`), AdamW moments (`adam_m.*`, `adam_v.*`),
//! EMA (`ema.*`), and in the metadata the step, optimizer/EMA counters, the data-order position,
//! the RNG state and the run's config. Written atomically, so an interrupted write leaves the
//! previous checkpoint intact.
use super::ema::Ema;
use super::optim::AdamW;
use super::TrainConfig;
use crate::core::rng::NoiseRng;
use crate::data::BatchState;
use crate::error::{Error, Result};
use crate::unet::UNetConfig;
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

pub const STATE_FILE: &str = "training_state.safetensors";
const FORMAT: &str = "diffuse-training-state-v1";

/// A loaded training state.
pub struct State {
    pub tensors: HashMap<String, Tensor>,
    pub step: usize,
    pub adam_t: usize,
    pub ema_updates: usize,
    pub rng: NoiseRng,
    pub batches: BatchState,
    pub config: TrainConfig,
}

#[allow(clippy::too_many_arguments)]
pub fn save(
    out: &Path,
    cfg: &TrainConfig,
    ucfg: &UNetConfig,
    step: usize,
    vars: &[(String, Var)],
    opt: &AdamW,
    ema: &Ema,
    rng: &NoiseRng,
    batches: BatchState,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.as_tensor().clone()))
        .collect();
    tensors.extend(opt.state_tensors());
    tensors.extend(
        ema.shadow
            .iter()
            .map(|(k, t)| (format!("ema.{k}"), t.clone())),
    );
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("step", step.to_string()),
        ("adam_t", opt.t.to_string()),
        ("ema_updates", ema.updates.to_string()),
        ("rng", serde_json::to_string(rng).unwrap_or_default()),
        (
            "batches",
            serde_json::to_string(&batches).unwrap_or_default(),
        ),
        ("config", serde_json::to_string(cfg).unwrap_or_default()),
        ("unet_config", ucfg.to_json()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let path = out.join(STATE_FILE);
    crate::io::output::write_safetensors(&path, &tensors, Some(meta))
}

pub fn load(path: &Path, ucfg: &UNetConfig, device: &Device) -> Result<State> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::format(path, m);
    let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a training state (safetensors): {e}")))?;
    let meta = st_meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a diffuse training state (format is not {FORMAT})"
        )));
    }
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("metadata has no '{k}'")))
    };
    let num = |k: &str| -> Result<usize> {
        get(k)?
            .parse()
            .map_err(|_| bad(format!("metadata '{k}' is not a number")))
    };
    let saved_ucfg = get("unet_config")?;
    let saved: serde_json::Value =
        serde_json::from_str(&saved_ucfg).map_err(|e| bad(e.to_string()))?;
    let current: serde_json::Value =
        serde_json::from_str(&ucfg.to_json()).map_err(|e| bad(e.to_string()))?;
    if saved != current {
        return Err(Error::Model(format!(
            "{}: the checkpoint was written for a different model config; use another --out or the same --model-config",
            path.display()
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(format!("unreadable tensors: {e}")))?;
    Ok(State {
        tensors,
        step: num("step")?,
        adam_t: num("adam_t")?,
        ema_updates: num("ema_updates")?,
        rng: serde_json::from_str(&get("rng")?).map_err(|e| bad(format!("rng: {e}")))?,
        batches: serde_json::from_str(&get("batches")?)
            .map_err(|e| bad(format!("batches: {e}")))?,
        config: serde_json::from_str(&get("config")?).map_err(|e| bad(format!("config: {e}")))?,
    })
}

/// Put the saved weights, moments and EMA back.
pub fn restore(st: &State, vars: &[(String, Var)], opt: &mut AdamW, ema: &mut Ema) -> Result<()> {
    let take = |k: &str| st.tensors.get(k).cloned();
    for (name, var) in vars {
        let t = take(&format!("model.{name}"))
            .ok_or_else(|| Error::Model(format!("training state has no weights for '{name}'")))?;
        if t.dims() != var.dims() {
            return Err(Error::Model(format!(
                "training state weights '{name}' have shape {:?}, the model has {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t)?;
    }
    opt.load_state(take, st.adam_t)?;
    for (name, shadow) in ema.shadow.iter_mut() {
        *shadow = take(&format!("ema.{name}"))
            .ok_or_else(|| Error::Model(format!("training state has no EMA for '{name}'")))?;
    }
    ema.updates = st.ema_updates;
    Ok(())
}
