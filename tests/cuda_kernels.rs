//! The hand-written CUDA kernels' math, checked without a GPU: tests/cuda/emulate.cpp runs
//! their CUDA source on the CPU (each thread an OS thread, __syncthreads a barrier, warp
//! shuffles through shared slots), and the checks beside it compare them with references:
//! group_norm_check.cpp the group norm's forward with float64 and its backward with central
//! differences; adamw_check.cpp AdamW with the update written out in float; conv_check.cpp
//! the convolution's im2col (both layouts), col2im and bias fill with their definitions and the
//! multiply-shift division with '/'; upsample_check.cpp the 2x nearest upsampling and its
//! adjoint; softmax_check.cpp the attention's row softmax with float64 and its backward with
//! central differences; im2col_check.cpp
//! the vendored candle-kernels im2col's index arithmetic with the definition; sum_squares_check.cpp
//! and ema_check.cpp the multi-tensor sum of squares (float64) and EMA update (the float
//! composite), adamw_check.cpp covering AdamW's multi-tensor launches too. The PTX and the
//! launch from Rust are what only a GPU run checks (tests/device.rs).
use std::path::Path;
use std::process::Command;

/// Compile `check` (tests/cuda/) against the kernel source `kernel` (a path in the repo) with
/// the emulator, run it, and return its report; every line must say ok.
fn emulate(kernel: &str, check: &str, cases: usize) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = tempfile::tempdir().unwrap();
    let bin = exe.path().join("check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&cxx)
        // No contraction into fused multiply-adds (GCC's default on FMA hosts): the checks
        // compare with float references exactly.
        .args([
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-pthread",
            "-x",
            "c++",
        ])
        .arg(format!("-DKERNEL=\"{}\"", root.join(kernel).display()))
        .arg(root.join("tests/cuda").join(check))
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("{cxx}: {e} (a C++20 compiler is needed: g++ 10 or later)"));
    assert!(status.success(), "compiling the emulated {kernel} failed");
    let out = Command::new(&bin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        cases,
        "{text}"
    );
    text
}

#[test]
fn group_norm_kernels_match_float64_and_finite_differences() {
    emulate("src/kernels/cuda/group_norm.cu", "group_norm_check.cpp", 7);
}

/// AdamW over pieces of several tensors: three steps with and without a gradient scale, in
/// launches of 2 pieces and of all of them, equal to the update written out in float in the
/// composite's order (a wrong index is caught).
#[test]
fn adamw_kernel_equals_the_composite_order_in_float() {
    emulate("src/kernels/cuda/adamw.cu", "adamw_check.cpp", 4);
}

/// Candle's im2col as vendored (32-bit indices where they fit, 64-bit otherwise): both index
/// types equal to the definition for five shapes, incl. a transposed source and the weight
/// gradient's image-sized kernel; more than 2^32 elements take the 64-bit path.
#[test]
fn vendored_im2col_equals_the_definition_in_both_index_widths() {
    emulate(
        "vendor/candle-kernels/src/im2col_index.cuh",
        "im2col_check.cpp",
        6,
    );
}

/// Our convolution's data movement (src/kernels/cuda/conv.cu): the multiply-shift division
/// against '/', im2col in both layouts against the definition, col2im against the float64
/// scatter-add of the columns (its adjoint), the bias fill; nine shapes (strides 1 and 2,
/// padding, 1x1 to 5x5 kernels, odd sizes), 1, 2 and 4 pixels per thread where the row length
/// allows, grid-stride loops wrapping.
#[test]
fn conv_kernels_equal_their_definitions() {
    emulate("src/kernels/cuda/conv.cu", "conv_check.cpp", 59);
}

/// Nearest 2x upsampling (src/kernels/cuda/upsample.cu): the forward equal to the definition,
/// the backward bit-equal to the CPU kernel's 2x2 sums, four shapes (odd sizes, one row).
#[test]
fn upsample_kernels_equal_their_definitions() {
    emulate("src/kernels/cuda/upsample.cu", "upsample_check.cpp", 4);
}

/// The attention's row softmax of scale * x (src/kernels/cuda/softmax.cu): the forward within
/// 1e-6 of float64, the backward within 1e-5 (relative to its scale) of central differences;
/// rows of 1 to 1,000 (shorter than a warp, not a multiple of the block, several elements per
/// thread) and scores whose exponentials would overflow without the row maximum.
#[test]
fn softmax_kernels_match_float64_and_finite_differences() {
    emulate("src/kernels/cuda/softmax.cu", "softmax_check.cpp", 7);
}

/// The sum of squares over many tensors (src/kernels/cuda/sum_squares.cu, global-norm
/// clipping): pieces across tensors of odd sizes, an empty one, a view at an offset, 32 and 256
/// threads, against float64 within 1e-6 relative, bit-equal on a repeat.
#[test]
fn sum_squares_kernels_match_float64() {
    emulate(
        "src/kernels/cuda/sum_squares.cu",
        "sum_squares_check.cpp",
        2,
    );
}

/// The EMA's multi-tensor update (src/kernels/cuda/ema.cu): three updates, pieces across
/// tensors of odd sizes, bit-equal to the composite written out in float.
#[test]
fn ema_kernel_equals_the_composite_in_float() {
    emulate("src/kernels/cuda/ema.cu", "ema_check.cpp", 2);
}
