//! A diffusers `UNet2DModel` pipeline on disk: finding one (our training output, a diffusers
//! pipeline or bare model directory, or a hub id through the hub cache) and writing one
//! (`unet/`, `scheduler/scheduler_config.json`, `model_index.json`), so our models load in
//! diffusers and theirs in ours.
use crate::error::{Error, Result};
use crate::io::hub::{self, Lookup, Repo};
use crate::sampler::SchedulerConfig;
use crate::unet::{self, UNetConfig};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};

/// A model on disk: its UNet directory and its scheduler config, if any.
#[derive(Clone, Debug)]
pub struct ModelLocation {
    pub unet_dir: PathBuf,
    pub scheduler_config: Option<PathBuf>,
    /// The pipeline's root directory when the model is a local directory (outputs must not
    /// be written inside it); None for the hub cache.
    pub root: Option<PathBuf>,
}

impl ModelLocation {
    /// The scheduler config the model ships, or diffusers' DDPMScheduler defaults.
    pub fn scheduler(&self) -> Result<SchedulerConfig> {
        match &self.scheduler_config {
            Some(p) => {
                let sc = SchedulerConfig::load(p)?;
                // Bad contents are a bad file (exit 1), named, not a bad flag.
                sc.schedule_config()
                    .and_then(|s| crate::core::schedule::Schedule::new(&s))
                    .map_err(|e| Error::format(p, e.to_string()))?;
                Ok(sc)
            }
            None => {
                tracing::info!("no scheduler_config.json found; using diffusers' DDPMScheduler defaults (linear 1e-4..0.02, T = 1000, epsilon)");
                Ok(SchedulerConfig::default())
            }
        }
    }
}

/// `classes.json` at a pipeline's root: what each class index of a class-conditional model
/// means, and which index is the null class of classifier-free guidance (if it has one).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Classes {
    pub names: Vec<String>,
    pub null_class: Option<usize>,
}

pub const CLASSES_FILE: &str = "classes.json";

impl Classes {
    /// Index names "0", "1", ... for a model without classes.json, no null class.
    pub fn numbered(k: usize) -> Self {
        Self {
            names: (0..k).map(|i| i.to_string()).collect(),
            null_class: None,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::io::input::read_text(path, 1 << 20)?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        if c.names.is_empty() || c.null_class.is_some_and(|n| n != c.names.len()) {
            return Err(Error::format(
                path,
                "needs at least one class name, and null_class (if any) right after the last",
            ));
        }
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("classes serialise") + "\n"
    }

    /// A class by name (any case) or index.
    pub fn resolve(&self, s: &str) -> Result<u32> {
        let t = s.trim();
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(t)) {
            return Ok(i as u32);
        }
        match t.parse::<usize>() {
            Ok(i) if i < self.names.len() => Ok(i as u32),
            _ => Err(Error::invalid(format!(
                "no class '{s}' (this model's classes: {})",
                self.names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| if *n == i.to_string() {
                        n.clone()
                    } else {
                        format!("{i} {n}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl ModelLocation {
    /// The classes of a model with `num_class_embeds`: its classes.json, else numbered.
    pub fn classes(&self, num_class_embeds: usize) -> Result<Classes> {
        let path = self.root.as_ref().map(|r| r.join(CLASSES_FILE));
        match path.filter(|p| p.is_file()) {
            Some(p) => {
                let c = Classes::load(&p)?;
                let want = c.names.len() + usize::from(c.null_class.is_some());
                if want != num_class_embeds {
                    return Err(Error::format(
                        &p,
                        format!("lists {want} class embeddings, the UNet has num_class_embeds = {num_class_embeds}"),
                    ));
                }
                Ok(c)
            }
            None => Ok(Classes::numbered(num_class_embeds)),
        }
    }
}

fn find_scheduler(root: &Path) -> Option<PathBuf> {
    [
        root.join("scheduler").join("scheduler_config.json"),
        root.join("scheduler_config.json"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Resolve `--model`: a directory (`unet/` + `scheduler/`, or a bare UNet2DModel folder), or a
/// hub id found in (or, unless HF_HUB_OFFLINE is set, fetched into) the hub cache.
pub fn locate(model: &str) -> Result<ModelLocation> {
    let p = Path::new(model);
    if p.is_dir() {
        let unet_dir = if p.join("unet").join("config.json").is_file() {
            p.join("unet")
        } else {
            p.to_path_buf()
        };
        if !unet_dir.join("config.json").is_file() {
            return Err(Error::format(
                p,
                "no config.json here or in unet/: not a UNet2DModel or diffusers pipeline directory",
            ));
        }
        return Ok(ModelLocation {
            unet_dir,
            scheduler_config: find_scheduler(p),
            root: Some(p.to_path_buf()),
        });
    }
    if p.exists() {
        return Err(Error::format(p, "a file, not a model directory"));
    }
    if model.matches('/').count() == 1 && !model.starts_with('.') && !model.starts_with('/') {
        return fetch(model);
    }
    Err(Error::io(
        p,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such model directory, and not a hub id of the form owner/name",
        ),
    ))
}

/// Look `filename` up in model repo `repo_id`: Ok(Some) if cached or downloaded, Ok(None) if the
/// repo has no such file, Err if it is not cached and cannot be fetched.
fn hub_file(repo_id: &str, filename: &str) -> Result<Option<PathBuf>> {
    match hub::lookup(Repo::Model, repo_id, filename)? {
        Lookup::Found(p) => Ok(Some(p)),
        Lookup::NotInRepo => Ok(None),
        Lookup::Unavailable(why) => Err(Error::Runtime(format!(
            "{why}; download it once online, or pass a local directory"
        ))),
    }
}

/// Fetch a UNet2DModel (pipeline layout with unet/ and scheduler/, or a bare model repo) and
/// return where it lies in the cache.
fn fetch(repo_id: &str) -> Result<ModelLocation> {
    for prefix in ["unet/", ""] {
        let Some(config) = hub_file(repo_id, &format!("{prefix}config.json"))? else {
            continue;
        };
        // The first weight file the repo has, in unet::io's order of preference; one that
        // cannot be fetched now is passed over for the next.
        let mut unavailable = None;
        let mut found = false;
        for name in crate::unet::io::WEIGHTS_CANDIDATES {
            match hub::lookup(Repo::Model, repo_id, &format!("{prefix}{name}"))? {
                Lookup::Found(_) => {
                    found = true;
                    break;
                }
                Lookup::NotInRepo => {}
                Lookup::Unavailable(why) => {
                    unavailable.get_or_insert(why);
                }
            }
        }
        if !found {
            return Err(match unavailable {
                Some(why) => Error::Runtime(format!(
                    "{why}; download it once online, or pass a local directory"
                )),
                None => Error::Model(format!(
                    "{repo_id}: no UNet weights in {prefix} ({})",
                    crate::unet::io::WEIGHTS_CANDIDATES.join(", ")
                )),
            });
        }
        let unet_dir = config.parent().map(PathBuf::from).unwrap_or_default();
        let sched_name = if prefix.is_empty() {
            "scheduler_config.json"
        } else {
            "scheduler/scheduler_config.json"
        };
        let scheduler_config = hub_file(repo_id, sched_name)?;
        tracing::info!("model {repo_id} from {}", unet_dir.display());
        return Ok(ModelLocation {
            unet_dir,
            scheduler_config,
            root: None,
        });
    }
    Err(Error::Model(format!(
        "{repo_id}: no config.json or unet/config.json in the repository"
    )))
}

/// The files and folders a pipeline directory holds (what `diffuse train` writes besides its
/// own logs).
pub const PIPELINE_ENTRIES: [&str; 3] = ["unet", "scheduler", "model_index.json"];

/// Write a pipeline: `unet/` (config + weights), `scheduler/scheduler_config.json`, and
/// `model_index.json`, so `DDPMPipeline.from_pretrained(out)` assembles it.
pub fn save(out: &Path, ucfg: &UNetConfig, weights: &VarMap, sc: &SchedulerConfig) -> Result<()> {
    unet::save(&out.join("unet"), ucfg, weights)?;
    let sdir = out.join("scheduler");
    std::fs::create_dir_all(&sdir).map_err(|e| Error::io(&sdir, e))?;
    sc.save(&sdir.join("scheduler_config.json"))?;
    let index = serde_json::json!({
        "_class_name": "DDPMPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", sc.class_name],
        "unet": ["diffusers", "UNet2DModel"],
    });
    crate::io::output::write_bytes_atomic(
        &out.join("model_index.json"),
        serde_json::to_string_pretty(&index)
            .unwrap_or_default()
            .as_bytes(),
    )
}
