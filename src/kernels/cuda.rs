//! Hand-written CUDA kernels (src/kernels/cuda/*.cu, compiled to PTX by build.rs) as Candle
//! custom ops: group norm (optionally fused with silu) forward and backward; and what the other
//! CUDA paths share (the switch, launch counts, grid-stride launches, contiguous views).
//!
//! Candle's GroupNorm on CUDA is ~10 full-size broadcast ops forward and ~25 backward; the
//! fused kernels read x twice and write once forward, read x and dy four times and write once
//! backward. Their math is checked on the CPU by running the same source through an emulator
//! (tests/cuda_kernels.rs), and on an H200 (the GPU check's device test: golden UNets and 50
//! training steps as with Candle's ops, launches counted). They are the default on CUDA
//! (cifar10 preset train step 221 -> 312 images/s there); `DIFFUSE_CUDA_KERNELS=0` turns them
//! off.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/group_norm.ptx"));
const MODULE: &str = "diffuse_group_norm";
/// Launches of these kernels so far in this process: what the GPU check's device test reads to
/// show that the default reaches them (and that `DIFFUSE_CUDA_KERNELS=0` keeps them off).
static LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn launches() -> usize {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn launched() {
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Threads per (sample, group) block: 8 warps.
const THREADS: u32 = 256;

/// The launch of a flat grid-stride kernel over `total` elements (src/kernels/cuda/grid.cuh):
/// blocks of 256, at most 8192 of them.
pub(crate) fn grid_stride(total: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (total.div_ceil(256).clamp(1, 8192) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Whether the CUDA kernels serve `ts`: all f32 on a CUDA device, unless DIFFUSE_CUDA_KERNELS=0.
pub(crate) fn enabled(ts: &[&Tensor]) -> bool {
    switched() && applies(ts)
}

/// Whether our CUDA paths are on: not with `DIFFUSE_CUDA_KERNELS=0`.
pub(crate) fn switched() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("DIFFUSE_CUDA_KERNELS").map_or(true, |v| v != "0"))
}

/// All f32 on a CUDA device: what the kernels take (tests call them regardless of the switch).
pub(crate) fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
}

pub(crate) fn view<'a>(
    op: &str,
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input expected")
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// (n, c, hw) of x [n, c, ...] split into `groups` groups, checked.
fn dims(x: &[usize], groups: usize) -> candle_core::Result<(usize, usize, usize)> {
    if x.len() < 3 || groups == 0 || !x[1].is_multiple_of(groups) {
        candle_core::bail!("group_norm: bad shape {x:?} for {groups} groups")
    }
    Ok((x[0], x[1], x[2..].iter().product()))
}

fn blocks(n: usize, groups: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n * groups) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The forward kernel: y = group_norm(x) * gamma + beta, then silu if asked.
pub(crate) fn group_norm_fwd(
    groups: usize,
    eps: f64,
    silu: bool,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, c, hw) = dims(l1.dims(), groups)?;
    if l2.shape().elem_count() != c || l3.shape().elem_count() != c {
        candle_core::bail!("group_norm: gamma/beta need {c} entries")
    }
    let op = "diffuse-group-norm (cuda)";
    let (x, gamma, beta) = (view(op, s1, l1)?, view(op, s2, l2)?, view(op, s3, l3)?);
    let dev = s1.device().clone();
    let func = dev.get_or_load_custom_func("diffuse_gn_fwd_f32", MODULE, PTX)?;
    // SAFETY: every element is written by the kernel.
    let y = unsafe { dev.alloc::<f32>(n * c * hw)? };
    let mut b = func.builder();
    b.arg(&x);
    b.arg(&gamma);
    b.arg(&beta);
    b.arg(&y);
    candle_core::builder_arg!(
        b,
        c as i32,
        hw as i32,
        groups as i32,
        eps as f32,
        silu as i32
    );
    // SAFETY: argument types and order match diffuse_gn_fwd_f32's signature.
    unsafe { b.launch(blocks(n, groups)) }.w()?;
    launched();
    Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
}

/// (x, [gamma | beta], dy) -> [dx | part], part [n, c, 2] = (sum dz xhat, sum dz) per sample
/// and channel: the backward kernel's one output.
struct GnBwd {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GnBwd {
    fn name(&self) -> &'static str {
        "diffuse-group-norm-bwd (cuda)"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: CUDA tensors expected", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, c, hw) = dims(l1.dims(), self.groups)?;
        let nel = n * c * hw;
        if l2.shape().elem_count() != 2 * c || l3.shape().elem_count() != nel {
            candle_core::bail!("group_norm backward: shape mismatch")
        }
        let (x, gb, dy) = (
            view(self.name(), s1, l1)?,
            view(self.name(), s2, l2)?,
            view(self.name(), s3, l3)?,
        );
        let dev = s1.device().clone();
        let func = dev.get_or_load_custom_func("diffuse_gn_bwd_f32", MODULE, PTX)?;
        let len = nel + 2 * n * c;
        // SAFETY: the kernel writes all of dx and every (sample, channel) pair of part.
        let out = unsafe { dev.alloc::<f32>(len)? };
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&gb);
        b.arg(&dy);
        b.arg(&out);
        candle_core::builder_arg!(
            b,
            n as i32,
            c as i32,
            hw as i32,
            self.groups as i32,
            self.eps as f32,
            self.silu as i32
        );
        // SAFETY: argument types and order match diffuse_gn_bwd_f32's signature.
        unsafe { b.launch(blocks(n, self.groups)) }.w()?;
        launched();
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(len)))
    }
}

/// dx, dgamma, dbeta of the fused group norm (with silu if `silu`) for upstream gradient dy.
pub(crate) fn group_norm_bwd(
    groups: usize,
    eps: f64,
    silu: bool,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let gb = Tensor::cat(
        &[gamma.detach().flatten_all()?, beta.detach().flatten_all()?],
        0,
    )?;
    let op = GnBwd { groups, eps, silu };
    let packed = x.apply_op3_no_bwd(&gb, &dy.contiguous()?, &op)?;
    let (nel, n, c) = (x.elem_count(), x.dim(0)?, gamma.elem_count());
    let dx = packed.narrow(0, 0, nel)?.reshape(x.shape())?;
    // Per-sample partial sums, reduced over the samples here.
    let sums = packed
        .narrow(0, nel, 2 * n * c)?
        .reshape((n, c, 2))?
        .sum(0)?;
    let dgamma = sums.narrow(1, 0, 1)?.reshape(gamma.shape())?;
    let dbeta = sums.narrow(1, 1, 1)?.reshape(beta.shape())?;
    Ok((dx, dgamma, dbeta))
}
