//! Models from the Hugging Face hub (e.g. google/ddpm-cifar10-32), through hf-hub into the
//! standard cache. The cache is tried first; with HF_HUB_OFFLINE set, nothing else is.
use crate::error::{Error, Result};
use crate::hub::{Lookup, Repo};
use crate::sample::ModelLocation;
use std::path::PathBuf;

/// Look `filename` up in model repo `repo_id`: Ok(Some) if cached or downloaded, Ok(None) if the
/// repo has no such file, Err if it is not cached and cannot be fetched.
fn get(repo_id: &str, filename: &str) -> Result<Option<PathBuf>> {
    match crate::hub::lookup(Repo::Model, repo_id, filename)? {
        Lookup::Found(p) => Ok(Some(p)),
        Lookup::NotInRepo => Ok(None),
        Lookup::Unavailable(why) => Err(Error::Runtime(format!(
            "{why}; download it once online, or pass a local directory"
        ))),
    }
}

/// Fetch a UNet2DModel (pipeline layout with unet/ and scheduler/, or a bare model repo) and
/// return where it lies in the cache.
pub fn fetch(repo_id: &str) -> Result<ModelLocation> {
    for prefix in ["unet/", ""] {
        let Some(config) = get(repo_id, &format!("{prefix}config.json"))? else {
            continue;
        };
        let weights = format!("{prefix}diffusion_pytorch_model.safetensors");
        if get(repo_id, &weights)?.is_none() {
            return Err(Error::Model(format!(
                "{repo_id}: no {weights} (only safetensors weights are supported)"
            )));
        }
        let unet_dir = config.parent().map(PathBuf::from).unwrap_or_default();
        let sched_name = if prefix.is_empty() {
            "scheduler_config.json"
        } else {
            "scheduler/scheduler_config.json"
        };
        let scheduler_config = get(repo_id, sched_name)?;
        tracing::info!("model {repo_id} from {}", unet_dir.display());
        return Ok(ModelLocation {
            unet_dir,
            scheduler_config,
        });
    }
    Err(Error::Model(format!(
        "{repo_id}: no config.json or unet/config.json in the repository"
    )))
}
