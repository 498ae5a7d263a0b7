//! The sum of squares of many tensors as one device scalar: what global-norm gradient clipping
//! needs every step (src/train/optim.rs).
//!
//! Candle's composite is `sqr`, `sum_all` and an add per tensor: three launches per gradient,
//! ~550 a step at the mnist preset (182 tensors), whose GPU step is launch-bound (README "GPU
//! (CUDA)"). On CUDA (unless `DIFFUSE_CUDA_KERNELS=0`) all the tensors go through
//! src/kernels/cuda/sum_squares.cu in a few launches instead: pieces of at most 2^16 elements,
//! up to 240 per launch in the kernel's parameters, then one block summing the pieces' sums,
//! in fixed orders (the same gradients give the same bits). Elsewhere, the composite, so the
//! CPU's training is bit for bit what it was.
use crate::error::Result;
use candle_core::Tensor;

/// The sum over `ts` of the sum of their squared elements, as a scalar on their device; None
/// for no tensors.
pub fn sum_squares(ts: &[&Tensor]) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if let Some(first) = ts.first() {
        let same = ts.iter().all(|t| t.device().same_device(first.device()));
        if same && super::cuda_f32(ts, true) {
            return Ok(Some(device::sum_squares(ts)?));
        }
    }
    let mut total: Option<Tensor> = None;
    for t in ts {
        let sq = t.sqr()?.sum_all()?;
        total = Some(match total {
            Some(s) => (s + sq)?,
            None => sq,
        });
    }
    Ok(total)
}

#[cfg(feature = "cuda")]
mod device {
    use super::super::cuda::launched;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{CudaStorage, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sum_squares.ptx"));
    const MODULE: &str = "diffuse_sum_squares";
    /// Pieces per launch: the kernel's PIECES.
    const PIECES: usize = 240;
    /// Elements per piece (one block's share).
    const PIECE: usize = 1 << 16;
    const THREADS: u32 = 256;

    /// The kernel's `Pieces` parameter, laid out as C lays it out (2,888 bytes).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Pieces {
        ptr: [u64; PIECES],
        len: [u32; PIECES],
        count: u32,
        first: u32,
    }
    // SAFETY: plain numbers, passed by value as the kernel's parameter.
    unsafe impl DeviceRepr for Pieces {}
    // The PTX declares the parameter as 2,888 bytes, aligned to 8.
    const _: () = assert!(std::mem::size_of::<Pieces>() == 2888);

    pub(super) fn sum_squares(ts: &[&Tensor]) -> candle_core::Result<Tensor> {
        let ts: Vec<Tensor> = ts
            .iter()
            .map(|t| t.contiguous())
            .collect::<candle_core::Result<_>>()?;
        let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
        let mut views = Vec::with_capacity(ts.len());
        let mut dev = None;
        for (st, l) in &guards {
            let Storage::Cuda(cs) = &**st else {
                candle_core::bail!("sum_squares: CUDA tensors expected")
            };
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("sum_squares: contiguous tensors expected")
            };
            views.push(cs.as_cuda_slice::<f32>()?.slice(a..b));
            dev.get_or_insert_with(|| cs.device().clone());
        }
        let dev = dev.expect("at least one tensor");
        let stream = dev.cuda_stream();
        // The guards record each gradient's use on the stream once the launches are queued.
        let mut reads = Vec::with_capacity(views.len());
        let mut pieces: Vec<(u64, u32)> = Vec::new();
        for v in &views {
            let (p, read) = v.device_ptr(&stream);
            reads.push(read);
            for s in (0..v.len()).step_by(PIECE) {
                pieces.push((p + 4 * s as u64, PIECE.min(v.len() - s) as u32));
            }
        }
        if pieces.is_empty() {
            let zero = dev.alloc_zeros::<f32>(1)?;
            return Ok(scalar(zero, &dev));
        }
        // SAFETY: the total kernel writes it.
        let mut out = unsafe { dev.alloc::<f32>(1)? };
        {
            // SAFETY: the part kernel writes every element (one per piece) before the total reads.
            let part = unsafe { dev.alloc::<f32>(pieces.len())? };
            let func = dev.get_or_load_custom_func("diffuse_sum_squares_part_f32", MODULE, PTX)?;
            for (k, chunk) in pieces.chunks(PIECES).enumerate() {
                let mut t = Pieces {
                    ptr: [0; PIECES],
                    len: [0; PIECES],
                    count: chunk.len() as u32,
                    first: (k * PIECES) as u32,
                };
                for (i, &(p, n)) in chunk.iter().enumerate() {
                    (t.ptr[i], t.len[i]) = (p, n);
                }
                let mut b = func.builder();
                b.arg(&t);
                b.arg(&part);
                let cfg = LaunchConfig {
                    grid_dim: (chunk.len() as u32, 1, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: argument types and order match the kernel's signature; every piece
                // lies within a live gradient held by `guards`.
                unsafe { b.launch(cfg) }.w()?;
                launched();
            }
            let func = dev.get_or_load_custom_func("diffuse_sum_squares_total_f32", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&part);
            let count = pieces.len() as u32;
            b.arg(&count);
            b.arg(&mut out);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
            launched();
        }
        drop(reads);
        Ok(scalar(out, &dev))
    }

    fn scalar(v: CudaSlice<f32>, dev: &CudaDevice) -> Tensor {
        Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(v, dev.clone())),
            (),
            candle_core::op::BackpropOp::none(),
            false,
        )
    }
}
