//! `--features cuda`: compiles the hand-written CUDA kernels (src/kernels/cuda/*.cu) to PTX for
//! src/kernels/cuda.rs to embed, with the toolkit's nvcc (CUDA_HOME/bin, else PATH; what
//! scripts/cuda-build.sh sets up) for CUDA_COMPUTE_CAP (default 90); and, for every build, the
//! backends `--version` lists.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 7] = [
    "group_norm",
    "adamw",
    "conv",
    "upsample",
    "softmax",
    "sum_squares",
    "ema",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    // `diffuse --version` names the backends compiled in, so a report says which build ran.
    let features: Vec<&str> = ["cuda", "cudnn", "metal", "mpi", "nccl"]
        .into_iter()
        .filter(|f| std::env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some())
        .collect();
    let features = if features.is_empty() {
        "cpu".to_string()
    } else {
        format!("cpu, {}", features.join(", "))
    };
    println!("cargo:rustc-env=DIFFUSE_BACKENDS={features}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    // The byte sizes of the kernels' struct parameters (`.param .align 8 .b8 <kernel>_param_0[N]`),
    // for src/kernels/pieces.rs to check its tables' layout against.
    let mut params = String::new();
    println!("cargo:rerun-if-changed=src/kernels/cuda/grid.cuh");
    println!("cargo:rerun-if-changed=src/kernels/cuda/block_reduce.cuh");
    println!("cargo:rerun-if-changed=src/kernels/cuda/pieces.cuh");
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
        // Assemble the PTX for the target as the driver's JIT will at load time, so a kernel
        // that would not load (or spills registers) fails the build here, not on a GPU.
        let ptxas = nvcc.with_file_name("ptxas");
        let asm = Command::new(&ptxas)
            .args([&format!("-arch=sm_{cap}"), "-v", "-o"])
            .arg(out.join(format!("{k}.cubin")))
            .arg(&ptx)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", ptxas.display()));
        let log = String::from_utf8_lossy(&asm.stderr);
        assert!(asm.status.success(), "ptxas failed on {k}.ptx:\n{log}");
        let spills = log.lines().any(|l| {
            l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
        });
        assert!(!spills, "{k}.ptx spills registers:\n{log}");
        let text = std::fs::read_to_string(&ptx).expect("the PTX just written");
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(".param .align 8 .b8 ") else {
                continue;
            };
            if let Some((name, size)) = rest.trim_end_matches(',').split_once("_param_0[") {
                let size = size.trim_end_matches(']');
                params += &format!("pub const {}: usize = {size};\n", name.to_uppercase());
            }
        }
    }
    std::fs::write(out.join("ptx_params.rs"), params).expect("OUT_DIR is writable");
}
