//! `--features cuda`: compiles the hand-written CUDA kernels (src/kernels/cuda/*.cu) to PTX for
//! src/kernels/cuda.rs to embed, with the toolkit's nvcc (CUDA_HOME/bin, else PATH; what
//! scripts/cuda-build.sh sets up) for CUDA_COMPUTE_CAP (default 90). Other builds: nothing.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 2] = ["group_norm", "adamw"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    for k in KERNELS {
        let src = format!("src/kernels/cuda/{k}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out.join(format!("{k}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=sm_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e} (the cuda feature needs nvcc)", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
