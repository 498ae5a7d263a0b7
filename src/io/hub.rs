//! Files from the Hugging Face hub through hf-hub's standard cache: the cache first, then
//! (unless HF_HUB_OFFLINE is set) the network. Shared by the dataset loaders (parquet
//! conversions) and `diffuse sample --model HUB_ID`.
//!
//! hf-hub 1.0 honours HF_HOME / HF_HUB_CACHE / HF_ENDPOINT but has no offline switch, so
//! HF_HUB_OFFLINE is read here and turns every lookup into a cache-only one.
use crate::error::{Error, Result};
use hf_hub::HFError;
use std::path::PathBuf;

/// True when HF_HUB_OFFLINE asks for no network (1/true/yes/on, any case).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Where hub files are cached: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
pub fn cache_dir() -> PathBuf {
    hf_hub::resolve_cache_dir()
}

/// Which kind of repository, and at which revision (None: the default branch).
#[derive(Clone, Copy, Debug)]
pub enum Repo<'a> {
    Model,
    Dataset { revision: Option<&'a str> },
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Found(PathBuf),
    /// The repository has no such file.
    NotInRepo,
    /// Not cached and not fetched (offline, no network, a failed download): why.
    Unavailable(String),
}

/// Look `filename` up in `repo_id`.
pub fn lookup(kind: Repo, repo_id: &str, filename: &str) -> Result<Lookup> {
    // Two attempts, not five: a missing network should fail (or fall back) quickly.
    let client = hf_hub::HFClient::builder()
        .retry_max_attempts(2)
        .build_sync()
        .map_err(|e| Error::Runtime(format!("hugging face hub client: {e}")))?;
    let (owner, name) = hf_hub::split_id(repo_id);
    // Model and dataset repositories are different types in hf-hub: one closure per lookup.
    let send = |local: bool| match kind {
        Repo::Model => client
            .model(owner, name)
            .download_file()
            .filename(filename)
            .local_files_only(local)
            .send(),
        Repo::Dataset { revision } => {
            let repo = client.dataset(owner, name);
            let d = repo.download_file().filename(filename);
            match revision {
                Some(rev) => d.revision(rev).local_files_only(local).send(),
                None => d.local_files_only(local).send(),
            }
        }
    };
    match send(true) {
        Ok(p) => return Ok(Lookup::Found(p)),
        Err(HFError::EntryNotFound { .. }) => return Ok(Lookup::NotInRepo),
        Err(HFError::LocalEntryNotFound { .. }) => {}
        Err(e) => {
            return Ok(Lookup::Unavailable(format!(
                "{repo_id}: hub cache lookup failed: {e}"
            )))
        }
    }
    if offline() {
        return Ok(Lookup::Unavailable(format!(
            "{repo_id}: {filename} is not in the hub cache {} and HF_HUB_OFFLINE is set",
            cache_dir().display()
        )));
    }
    match send(false) {
        Ok(p) => Ok(Lookup::Found(p)),
        Err(HFError::EntryNotFound { .. }) => Ok(Lookup::NotInRepo),
        Err(e) => Ok(Lookup::Unavailable(format!(
            "{repo_id}: could not download {filename}: {e}"
        ))),
    }
}
