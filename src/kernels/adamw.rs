//! AdamW as one pass per parameter on CPU (issue 8: "fused AdamW over all parameters"), and
//! over all parameters in a few multi-tensor launches on CUDA (src/kernels/cuda/adamw.cu).
//!
//! The composite update (`train::optim::AdamW::step` on other devices) is ~12 allocating
//! Candle ops per parameter tensor: 3.4-3.9 ms of a ~225 ms mnist train step. Here the
//! weights are updated in place and the two moments are written once, with the same f32
//! operations in the same order as the composite, so both paths give bit-identical results.
use super::par::{avx2_dispatch, for_each_range, SharedMut, SharedUninit};
use super::{cpu_f32, f32_inputs};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, InplaceOp3, Layout, Tensor};
use std::mem::MaybeUninit;
use std::sync::Mutex;

/// The update's scalars, as the composite ops see them (each `f64` rounded to f32 by Candle's
/// affine ops).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    pub beta1: f64,
    pub beta2: f64,
    /// 1 - beta1^t and 1 - beta2^t.
    pub bc1: f64,
    pub bc2: f64,
    pub eps: f64,
    pub lr: f64,
    pub weight_decay: f64,
    /// Gradient scale (global-norm clipping), if any.
    pub scale: Option<f32>,
}

/// The update's f32 constants.
#[derive(Clone, Copy)]
pub(crate) struct Consts {
    pub(crate) b1: f32,
    pub(crate) omb1: f32,
    pub(crate) b2: f32,
    pub(crate) omb2: f32,
    pub(crate) ibc1: f32,
    pub(crate) ibc2: f32,
    pub(crate) eps: f32,
    pub(crate) decay: f32,
    pub(crate) lr: f32,
    /// 1 when there is no clipping (g * 1 is exact).
    pub(crate) scale: f32,
}

impl Consts {
    pub(crate) fn new(h: &AdamWScalars) -> Self {
        // Candle's `t * x` and `t / x` for f64 x are affine ops with the factor cast to f32.
        let f = |x: f64| x as f32;
        Self {
            b1: f(h.beta1),
            omb1: f(1.0 - h.beta1),
            b2: f(h.beta2),
            omb2: f(1.0 - h.beta2),
            ibc1: f(1.0 / h.bc1),
            ibc2: f(1.0 / h.bc2),
            eps: f(h.eps),
            decay: f(1.0 - h.lr * h.weight_decay),
            lr: f(h.lr),
            scale: h.scale.unwrap_or(1.0),
        }
    }
}

/// One chunk: the composite's operations, elementwise, in its order (IEEE sqrt and divide
/// are exact in vector form too, so vectorising keeps the results bit-identical).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_body(
    p: &mut [f32],
    g: &[f32],
    m0: &[f32],
    v0: &[f32],
    m: &mut [MaybeUninit<f32>],
    v: &mut [MaybeUninit<f32>],
    c: Consts,
) {
    let n = p.len();
    assert!(g.len() == n && m0.len() == n && v0.len() == n && m.len() == n && v.len() == n);
    for j in 0..n {
        let g = g[j] * c.scale;
        let mk = m0[j] * c.b1 + g * c.omb1;
        let vk = v0[j] * c.b2 + (g * g) * c.omb2;
        let upd = (mk * c.ibc1) / ((vk * c.ibc2).sqrt() + c.eps);
        m[j].write(mk);
        v[j].write(vk);
        p[j] = p[j] * c.decay - upd * c.lr;
    }
}
avx2_dispatch!(fn update(p: &mut [f32], g: &[f32], m0: &[f32], v0: &[f32], m: &mut [MaybeUninit<f32>], v: &mut [MaybeUninit<f32>], c: Consts) => update_body);

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

struct Step {
    h: AdamWScalars,
    /// The new [m | v], written by `cpu_fwd`.
    out: Mutex<Vec<f32>>,
}

impl InplaceOp3 for Step {
    fn name(&self) -> &'static str {
        "diffuse-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let [g, mv] = f32_inputs(self.name(), [(s2, l2), (s3, l3)])?;
        let CpuStorage::F32(p) = s1 else {
            candle_core::bail!("adamw: f32 weights expected")
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("adamw: contiguous weights expected")
        };
        let p = &mut p[a..b];
        let n = p.len();
        if g.len() != n || mv.len() != 2 * n {
            candle_core::bail!(
                "adamw: {n} weights, {} gradients, {} moments",
                g.len(),
                mv.len()
            )
        }
        let c = Consts::new(&self.h);
        let (m0, v0) = mv.split_at(n);
        let pp = SharedMut::new(p);
        let mut out: Vec<f32> = Vec::with_capacity(2 * n);
        let op = SharedUninit::new(&mut out, 2 * n);
        for_each_range(n.div_ceil(CHUNK), |r| {
            for i in r {
                let rg = i * CHUNK..((i + 1) * CHUNK).min(n);
                // SAFETY: chunk i owns rg in p and in both halves of the new moments.
                let (p, m, v) = unsafe {
                    (
                        pp.slice(rg.clone()),
                        op.piece(rg.start, rg.len()),
                        op.piece(n + rg.start, rg.len()),
                    )
                };
                update(p, &g[rg.clone()], &m0[rg.clone()], &v0[rg], m, v, c);
            }
        });
        // SAFETY: the chunks cover 0..n, and each wrote m and v over its range.
        unsafe { out.set_len(2 * n) };
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = out;
        Ok(())
    }
}

/// Whether `step` applies: all on CPU in f32, or on CUDA in f32 unless DIFFUSE_CUDA_KERNELS=0.
pub fn applies(p: &Tensor, g: &Tensor, mv: &Tensor) -> bool {
    cpu_f32(&[p, g, mv]) || super::cuda_f32(&[p, g, mv], true)
}

/// One AdamW update of `p` in place from gradient `g` and moments `mv` = [m | v] (flat,
/// 2 numel); returns the new [m | v]. The gradient scale is `h.scale` on the CPU; on CUDA
/// (CUDA builds, f32) it is `device_scale`, a one-element tensor read by the kernel, and `mv`
/// is updated in place and returned.
pub fn step(
    p: &Tensor,
    g: &Tensor,
    mv: &Tensor,
    h: AdamWScalars,
    device_scale: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(step_many(&[(p, g, mv)], h, device_scale)?.remove(0))
}

/// `step` for every (p, g, mv) of `items`, in their order: on the CPU one parallel pass per
/// tensor; on CUDA all of them in a few multi-tensor launches (src/kernels/pieces.rs), where
/// one launch per tensor made 182 a step at the mnist preset.
pub fn step_many(
    items: &[(&Tensor, &Tensor, &Tensor)],
    h: AdamWScalars,
    device_scale: Option<&Tensor>,
) -> Result<Vec<Tensor>> {
    if items.iter().any(|(p, _, _)| !p.is_contiguous()) {
        return Err(Error::invalid(
            "adamw: contiguous weights expected".to_string(),
        ));
    }
    #[cfg(feature = "cuda")]
    {
        let all: Vec<&Tensor> = items.iter().flat_map(|(p, g, mv)| [*p, *g, *mv]).collect();
        if super::pieces::takes(&all, false) {
            if h.scale.is_some() {
                return Err(Error::invalid(
                    "adamw: on CUDA the gradient scale is a device tensor (device_scale), not h.scale",
                ));
            }
            return Ok(device::step_many(items, &h, device_scale)?);
        }
    }
    if items
        .iter()
        .any(|(p, g, mv)| !p.device().is_cpu() || !g.device().is_cpu() || !mv.device().is_cpu())
    {
        return Err(Error::invalid(
            "adamw: the fused update takes f32 tensors all on the CPU or all on one CUDA device",
        ));
    }
    if device_scale.is_some() {
        return Err(Error::invalid(
            "adamw: a device gradient scale is for CUDA tensors; give h.scale on the CPU",
        ));
    }
    items
        .iter()
        .map(|(p, g, mv)| {
            let op = Step {
                h,
                out: Mutex::new(Vec::new()),
            };
            p.inplace_op3(&g.contiguous()?, &mv.contiguous()?, &op)?;
            let out = std::mem::take(&mut *op.out.lock().unwrap_or_else(|e| e.into_inner()));
            let n = out.len();
            Ok(Tensor::from_vec(out, n, p.device())?)
        })
        .collect()
}

#[cfg(feature = "cuda")]
mod device {
    use super::super::cuda::launched;
    use super::super::pieces::{contiguous, Lists};
    use super::{AdamWScalars, Consts};
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{DType, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));

    /// Every (p, g, mv) updated in place (p and mv = [m | v] contiguous, f32, one CUDA device),
    /// the gradients scaled by the one-element `scale` if given (read on the device); returns
    /// each mv.
    pub(super) fn step_many(
        items: &[(&Tensor, &Tensor, &Tensor)],
        h: &AdamWScalars,
        scale: Option<&Tensor>,
    ) -> candle_core::Result<Vec<Tensor>> {
        let mvs: Vec<Tensor> = items
            .iter()
            .map(|(_, _, mv)| mv.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        // The lists p, g, m, v: m and v are views into mv, which the kernel writes in place.
        let mut lists: Vec<Tensor> = Vec::with_capacity(4 * items.len());
        for ((p, g, _), mv) in items.iter().zip(&mvs) {
            let n = p.elem_count();
            if g.elem_count() != n || mv.elem_count() != 2 * n || !mv.is_contiguous() {
                candle_core::bail!(
                    "adamw: {n} weights, {} gradients, {} contiguous moments expected",
                    g.elem_count(),
                    mv.elem_count()
                )
            }
            lists.extend([
                (*p).clone(),
                (*g).clone(),
                mv.narrow(0, 0, n)?,
                mv.narrow(0, n, n)?,
            ]);
        }
        let refs: Vec<&Tensor> = lists.iter().collect();
        // p and the moments are contiguous, so this keeps their storage (g may be copied).
        let held = contiguous(&refs)?;
        let guards: Vec<_> = held.iter().map(|t| t.storage_and_layout()).collect();
        let lists = Lists::new(&guards)?;
        let scale = match scale {
            Some(s) => {
                let s = s.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
                if s.elem_count() != 1 {
                    candle_core::bail!("adamw: the gradient scale must have one element")
                }
                Some(s)
            }
            None => None,
        };
        let scale_guard = scale.as_ref().map(|s| s.storage_and_layout());
        let scale_view = match &scale_guard {
            Some((st, l)) => match &**st {
                Storage::Cuda(cs) if cs.device.id() == lists.dev.id() => {
                    Some(super::super::cuda::view("adamw", cs, l)?)
                }
                _ => {
                    candle_core::bail!("adamw: the gradient scale must be on the same CUDA device")
                }
            },
            None => None,
        };
        let stream = lists.dev.cuda_stream();
        // Unread without a scale (has_scale 0): a null pointer.
        let (scale_ptr, _scale_read) = match &scale_view {
            Some(v) => {
                let (p, g) = v.device_ptr(&stream);
                (p, Some(g))
            }
            None => (0u64, None),
        };
        let (tables, reads) = lists.tables::<4, 100>()?;
        let func = lists
            .dev
            .get_or_load_custom_func("diffuse_adamw_f32", "diffuse_adamw", PTX)?;
        let c = Consts::new(h);
        let has_scale = scale_view.is_some() as i32;
        for t in &tables {
            let mut b = func.builder();
            b.arg(t);
            b.arg(&scale_ptr);
            b.arg(&has_scale);
            for v in [
                &c.b1, &c.omb1, &c.b2, &c.omb2, &c.ibc1, &c.ibc2, &c.eps, &c.decay, &c.lr,
            ] {
                b.arg(v);
            }
            // SAFETY: argument types and order match diffuse_adamw_f32's signature; every piece
            // lies within a tensor `guards` holds. The kernel writes p, m and v through the
            // addresses of read guards: p is the variable's own storage and mv the optimizer's,
            // read by nothing else while the launch is queued, as an in-place op's would be.
            unsafe { b.launch(t.config()) }.w()?;
            launched();
        }
        drop(reads);
        Ok(mvs)
    }
}
