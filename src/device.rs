//! `--device auto|cpu|cuda[:N]|metal[:N]` parsing; every compute path takes the resulting `Device`.
use crate::error::{Error, Result};
use candle_core::Device;

/// Environment variables in which launchers give a process its rank on its machine (Open MPI,
/// MPICH/Hydra, Slurm, torchrun-style).
const LOCAL_RANK_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
    "LOCAL_RANK",
];

/// The process's rank on its machine when a launcher started it: the GPU it takes when
/// `cuda` or `auto` names none (one process per GPU).
pub fn local_rank() -> Option<usize> {
    LOCAL_RANK_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Parse a device spec. `auto` picks CUDA, then Metal, then CPU. Without a number, `cuda` and
/// `auto` take GPU `local_rank()` under a launcher, else GPU 0.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n: usize = n.parse().map_err(|_| {
                Error::invalid(format!("device '{spec}': '{n}' is not a device number"))
            })?;
            (k.to_string(), n)
        }
        None if spec == "cuda" || spec == "auto" => (spec.clone(), local_rank().unwrap_or(0)),
        None => (spec.clone(), 0),
    };
    match kind.as_str() {
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                match open_cuda(ordinal) {
                    Ok(d) => return Ok(d),
                    // One CUDA binary serves machines without a GPU too, as PyTorch's do.
                    Err(why) => tracing::warn!("CUDA is not usable ({why}); using the CPU"),
                }
            }
            if candle_core::utils::metal_is_available() {
                Ok(Device::new_metal(0)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cpu" if ordinal == 0 => Ok(Device::Cpu),
        "cpu" => Err(Error::invalid(format!(
            "device '{spec}': there is one CPU device, cpu (or cpu:0)"
        ))),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::invalid(
                    "device 'cuda': this build has no CUDA support (rebuild with `--features cuda`)",
                ));
            }
            open_cuda(ordinal)
                .map_err(|why| Error::Runtime(format!("device 'cuda:{ordinal}': {why}")))
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(Error::invalid(
                    "device 'metal': this build has no Metal support (rebuild with `--features metal`)",
                ));
            }
            Device::new_metal(ordinal)
                .map_err(|e| Error::invalid(format!("device 'metal:{ordinal}': {e}")))
        }
        other => Err(Error::invalid(format!(
            "unknown device '{other}' (expected auto, cpu, cuda[:N] or metal[:N])"
        ))),
    }
}

/// Open CUDA device `ordinal`, or say in one line why not. The driver is loaded at run time
/// (cudarc's dynamic loading), and a missing libcuda panics inside cudarc: that panic is caught
/// and silenced here, so a machine without a driver gets a message, not a backtrace.
fn open_cuda(ordinal: usize) -> std::result::Result<Device, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match r {
        Ok(Ok(d)) => {
            // DIFFUSE_TF32=1: f32 GEMMs (and so the im2col convolutions) on TF32 tensor
            // cores, as PyTorch runs its cuDNN convolutions by default; off by default so
            // results match diffusers to f32 precision.
            if std::env::var("DIFFUSE_TF32").is_ok_and(|v| v == "1") {
                candle_core::cuda::set_gemm_reduced_precision_f32(true);
            }
            Ok(d)
        }
        Ok(Err(e)) => Err(e
            .to_string()
            .lines()
            .next()
            .unwrap_or("unknown error")
            .to_string()),
        Err(_) => Err("no NVIDIA driver found (libcuda.so.1 could not be loaded)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_cpu_and_rejects_unknown() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("auto").is_ok());
        assert!(parse_device("tpu").unwrap_err().is_usage());
        assert!(parse_device("cuda:x").unwrap_err().is_usage());
        assert!(parse_device("cpu:5").unwrap_err().is_usage());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:0")
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
