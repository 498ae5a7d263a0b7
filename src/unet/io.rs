//! Reading and writing diffusers model directories (config.json +
//! diffusion_pytorch_model.safetensors), the parameter list a config implies, and seeded
//! initialisation. Every tensor lives in a `VarMap` so training optimises the same variables.
use super::config::UNetConfig;
use super::model::UNet2DModel;
use super::precision::Precision;
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// The weight files diffusers may have written, in the order we prefer them: full-precision
/// safetensors, the `fp16` variant, then PyTorch's zip pickle (`safe_serialization=False`,
/// what older hub repos hold) and its fp16 variant.
pub const WEIGHTS_CANDIDATES: [&str; 4] = [
    WEIGHTS_FILE,
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
];

/// The weight file of a model directory (see `WEIGHTS_CANDIDATES`).
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    WEIGHTS_CANDIDATES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::format(
                dir,
                format!("no weights ({})", WEIGHTS_CANDIDATES.join(", ")),
            )
        })
}

fn is_pickle(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "bin")
}

/// A VarBuilder backend that only records what the model asks for: the parameter list of a
/// config without allocating it (each answer is a broadcast scalar).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, Shape)>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("recorder")
            .push((name.to_string(), s.clone()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unexpected unchecked tensor request {name}")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Every parameter the config creates, as (diffusers key, shape), in construction order.
pub fn param_spec(cfg: &UNetConfig) -> Result<Vec<(String, Shape)>> {
    let rec = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    UNet2DModel::new(cfg, vb)?;
    let v = rec.0.lock().expect("recorder").clone();
    Ok(v)
}

/// Total number of parameters (scalars).
pub fn param_count(cfg: &UNetConfig) -> Result<usize> {
    Ok(param_spec(cfg)?.iter().map(|(_, s)| s.elem_count()).sum())
}

/// Top-level module of a key: `down_blocks.1.resnets.0.conv1.weight` -> `down_blocks.1`.
pub fn top_level(key: &str) -> String {
    let mut parts = key.split('.');
    let first = parts.next().unwrap_or("");
    match first {
        "down_blocks" | "up_blocks" => format!("{first}.{}", parts.next().unwrap_or("")),
        _ => first.to_string(),
    }
}

/// Parameter counts per top-level block in diffusers' module order.
pub fn param_counts_by_block(cfg: &UNetConfig) -> Result<Vec<(String, usize)>> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (k, s) in param_spec(cfg)? {
        let top = top_level(&k);
        match out.iter_mut().find(|(n, _)| *n == top) {
            Some(e) => e.1 += s.elem_count(),
            None => out.push((top, s.elem_count())),
        }
    }
    // diffusers registers conv_in, time_proj/time_embedding, down, mid, up, conv_norm_out, conv_out;
    // our construction order matches except that conv_norm_out/conv_out come last already.
    Ok(out)
}

/// The directory holding config.json: `dir` itself or a pipeline's `dir/unet`.
pub fn model_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join(CONFIG_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let sub = dir.join("unet");
    if sub.join(CONFIG_FILE).is_file() {
        return Ok(sub);
    }
    if !dir.exists() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        ));
    }
    Err(Error::format(
        dir,
        "no config.json here or in unet/ (not a diffusers UNet2DModel or pipeline directory)",
    ))
}

/// Check a parsed safetensors file against the parameter list of `cfg`: a missing,
/// unexpected or mis-shaped tensor is an error naming it.
pub fn check_tensors(st: &safetensors::SafeTensors, cfg: &UNetConfig, path: &Path) -> Result<()> {
    let have: BTreeMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect();
    check_names(&have, cfg, path)
}

/// Check tensor names and shapes against the parameter list of `cfg`.
pub fn check_names(
    have: &BTreeMap<String, Vec<usize>>,
    cfg: &UNetConfig,
    path: &Path,
) -> Result<()> {
    let spec = param_spec(cfg)?;
    let want: BTreeMap<&str, &Shape> = spec.iter().map(|(k, s)| (k.as_str(), s)).collect();
    let missing: Vec<&str> = want
        .keys()
        .filter(|k| !have.contains_key(**k))
        .copied()
        .collect();
    let extra: Vec<&String> = have
        .keys()
        .filter(|k| !want.contains_key(k.as_str()))
        .collect();
    let more = |n: usize| {
        if n > 1 {
            format!(" (and {} more)", n - 1)
        } else {
            String::new()
        }
    };
    if let Some(k) = missing.first() {
        return Err(Error::format(
            path,
            format!(
                "missing tensor '{k}'{} required by the config",
                more(missing.len())
            ),
        ));
    }
    if let Some(k) = extra.first() {
        return Err(Error::format(
            path,
            format!(
                "unexpected tensor '{k}'{} not in the config",
                more(extra.len())
            ),
        ));
    }
    for (k, s) in &want {
        let got = &have[*k];
        if got.as_slice() != s.dims() {
            return Err(Error::format(
                path,
                format!(
                    "tensor '{k}' has shape {got:?}, the config expects {:?}",
                    s.dims()
                ),
            ));
        }
    }
    Ok(())
}

fn parse_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<safetensors::SafeTensors<'a>> {
    safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))
}

/// The tensors of a PyTorch zip pickle, checked against `cfg`. Candle's pickle reader
/// interprets only the opcodes a state dict needs (it runs no Python), so an untrusted .bin
/// cannot execute code.
fn read_weights_raw_pickle(path: &Path, cfg: &UNetConfig) -> Result<Vec<(String, Tensor)>> {
    let ts = candle_core::pickle::read_all(path).map_err(|e| {
        Error::format(
            path,
            format!("not a PyTorch state dict this reader understands ({e})"),
        )
    })?;
    let have = ts
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    check_names(&have, cfg, path)?;
    Ok(ts)
}

/// Read a weight file (safetensors, or a PyTorch zip pickle `.bin`) checked against `cfg`
/// (see `check_tensors`), converted to f32.
pub fn read_weights(
    path: &Path,
    cfg: &UNetConfig,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let loaded: Vec<(String, Tensor)> = if is_pickle(path) {
        read_weights_raw_pickle(path, cfg)?
    } else {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = parse_safetensors(&bytes, path)?;
        check_tensors(&st, cfg, path)?;
        st.tensors()
            .into_iter()
            .map(|(k, view)| {
                candle_core::safetensors::Load::load(&view, &Device::Cpu)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| Error::format(path, format!("tensor '{k}': {e}")))
            })
            .collect::<Result<_>>()?
    };
    let mut out = HashMap::new();
    for (k, t) in loaded {
        let t = t.to_dtype(DType::F32)?.to_device(device)?;
        // A NaN weight makes every sample NaN (an all-black grid): say which tensor instead.
        let bad = count_non_finite(&t)?;
        if bad > 0 {
            return Err(Error::format(
                path,
                format!("tensor '{k}' holds {bad} non-finite values (NaN or inf); the weights are corrupt"),
            ));
        }
        out.insert(k, t);
    }
    Ok(out)
}

/// How many entries of `t` are NaN or infinite.
pub fn count_non_finite(t: &Tensor) -> Result<usize> {
    let v: Vec<f32> = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    Ok(v.iter().filter(|x| !x.is_finite()).count())
}

/// What a weights file holds: bytes on disk and the dtypes of its tensors.
#[derive(Debug, Clone)]
pub struct WeightsInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub dtypes: Vec<String>,
}

/// Validate the weights file of a model directory without building the model.
pub fn inspect_weights(path: &Path, cfg: &UNetConfig) -> Result<WeightsInfo> {
    if is_pickle(path) {
        let ts = read_weights_raw_pickle(path, cfg)?;
        let mut dtypes: Vec<String> = ts.iter().map(|(_, t)| format!("{:?}", t.dtype())).collect();
        dtypes.sort();
        dtypes.dedup();
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        return Ok(WeightsInfo {
            path: path.to_path_buf(),
            bytes,
            dtypes,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = parse_safetensors(&bytes, path)?;
    check_tensors(&st, cfg, path)?;
    let mut dtypes: Vec<String> = st
        .tensors()
        .iter()
        .map(|(_, v)| format!("{:?}", v.dtype()))
        .collect();
    dtypes.sort();
    dtypes.dedup();
    Ok(WeightsInfo {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        dtypes,
    })
}

/// A VarMap holding exactly `tensors` as trainable variables.
pub fn varmap_from(tensors: HashMap<String, Tensor>) -> Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().expect("varmap");
        for (k, t) in tensors {
            data.insert(k, Var::from_tensor(&t)?);
        }
    }
    Ok(vm)
}

/// Build the model over `vm` (which must already hold every parameter).
pub fn build(cfg: &UNetConfig, vm: &VarMap, device: &Device) -> Result<UNet2DModel> {
    UNet2DModel::new(cfg, VarBuilder::from_varmap(vm, DType::F32, device))
}

/// A model over detached copies of the VarMap's tensors: no autograd graph is recorded, the
/// inference path (sampling, benchmarks). Changes to the VarMap later are not seen.
pub fn frozen(cfg: &UNetConfig, vm: &VarMap, device: &Device) -> Result<UNet2DModel> {
    frozen_as(cfg, vm, Precision::F32, device)
}

/// `frozen` with the weights cast to `precision` (half-precision inference).
pub fn frozen_as(
    cfg: &UNetConfig,
    vm: &VarMap,
    precision: Precision,
    device: &Device,
) -> Result<UNet2DModel> {
    let dtype = precision.dtype();
    let ts = vm
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_dtype(dtype)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    UNet2DModel::new(cfg, VarBuilder::from_tensors(ts, dtype, device))
}

/// Load a diffusers UNet2DModel directory (or a pipeline directory with unet/).
pub fn load(dir: &Path, device: &Device) -> Result<(UNetConfig, VarMap, UNet2DModel)> {
    let dir = model_dir(dir)?;
    let cfg = UNetConfig::from_file(&dir.join(CONFIG_FILE))?;
    let wpath = weights_file(&dir)?;
    tracing::info!("weights: {}", wpath.display());
    let tensors = read_weights(&wpath, &cfg, device)?;
    let vm = varmap_from(tensors)?;
    let model = build(&cfg, &vm, device)?;
    Ok((cfg, vm, model))
}

/// Write config.json and diffusion_pytorch_model.safetensors (metadata format=pt), each atomically.
pub fn save(dir: &Path, cfg: &UNetConfig, vm: &VarMap) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> = {
        let data = vm.data().lock().expect("varmap");
        let mut v: Vec<(String, Tensor)> = data
            .iter()
            .map(|(k, var)| (k.clone(), var.as_tensor().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let wpath = dir.join(WEIGHTS_FILE);
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    crate::io::output::write_safetensors(&wpath, &tensors, Some(meta))?;
    crate::io::output::write_bytes_atomic(&dir.join(CONFIG_FILE), cfg.to_json().as_bytes())
}

/// Fresh parameters, seeded: PyTorch's default init for Conv2d/Linear (weight and bias
/// uniform in ±1/sqrt(fan_in)), GroupNorm weight 1 and bias 0, as diffusers starts training.
pub fn init(cfg: &UNetConfig, seed: u64, device: &Device) -> Result<(VarMap, UNet2DModel)> {
    let spec = param_spec(cfg)?;
    let fan_in: HashMap<String, usize> = spec
        .iter()
        .filter(|(k, s)| k.ends_with(".weight") && s.rank() >= 2)
        .map(|(k, s)| {
            let prefix = k.trim_end_matches(".weight").to_string();
            (prefix, s.dims()[1..].iter().product())
        })
        .collect();
    let mut rng = NoiseRng::new(seed);
    let mut tensors = HashMap::with_capacity(spec.len());
    for (k, s) in &spec {
        let prefix = k.rsplit_once('.').map(|p| p.0).unwrap_or("");
        let t = match fan_in.get(prefix) {
            Some(&f) => {
                let bound = 1.0 / (f as f32).sqrt();
                let u = rng.uniform_f32(s.elem_count());
                let v: Vec<f32> = u.into_iter().map(|u| (2.0 * u - 1.0) * bound).collect();
                Tensor::from_vec(v, s.clone(), device)?
            }
            None if k.ends_with(".weight") => Tensor::ones(s.clone(), DType::F32, device)?,
            None => Tensor::zeros(s.clone(), DType::F32, device)?,
        };
        tensors.insert(k.clone(), t);
    }
    let vm = varmap_from(tensors)?;
    let model = build(cfg, &vm, device)?;
    Ok((vm, model))
}
