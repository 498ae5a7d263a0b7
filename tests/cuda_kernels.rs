//! The hand-written CUDA kernels' math, checked without a GPU: tests/cuda/emulate.cpp runs
//! their CUDA source on the CPU (each thread an OS thread, __syncthreads a barrier, warp
//! shuffles through shared slots), and tests/cuda/group_norm_check.cpp compares the group-norm
//! forward with a float64 reference and its backward with central differences of it. The PTX
//! and the launch from Rust are what only a GPU run checks (tests/device.rs).
use std::path::Path;
use std::process::Command;

#[test]
fn group_norm_kernels_match_float64_and_finite_differences() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = tempfile::tempdir().unwrap();
    let bin = exe.path().join("group_norm_check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-x", "c++"])
        .arg(format!(
            "-DKERNEL=\"{}\"",
            root.join("src/kernels/cuda/group_norm.cu").display()
        ))
        .arg(root.join("tests/cuda/group_norm_check.cpp"))
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("{cxx}: {e} (a C++20 compiler is needed: g++ 10 or later)"));
    assert!(status.success(), "compiling the emulated kernels failed");
    let out = Command::new(&bin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        5,
        "{text}"
    );
}
