//! Multi-tensor CUDA launches (PyTorch's `multi_tensor_apply`): K parallel lists of f32
//! tensors (say weights, gradients, moments) cut into pieces of at most 2^16 elements, up to P
//! pieces per launch passed in the kernel's parameters (no table copied to the device), one
//! block per piece. For the per-step work over every parameter tensor, where one launch per
//! tensor and per Candle op made the mnist preset's GPU step launch-bound: the gradient norm's
//! sum of squares, AdamW and the EMA. The kernels' side is src/kernels/cuda/pieces.cuh.
use candle_core::cuda_backend::cudarc::driver::{
    CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchConfig, SyncOnDrop,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Storage, Tensor};
use std::sync::Arc;

/// Elements per piece (one block's share).
const PIECE: usize = 1 << 16;
/// Threads per block.
const THREADS: u32 = 256;

/// One launch's pieces, laid out as `Pieces<K, P>` in pieces.cuh: K arrays of P addresses,
/// the lengths, how many pieces, and the index of the first (for per-piece outputs).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Table<const K: usize, const P: usize> {
    ptr: [[u64; P]; K],
    len: [u32; P],
    count: u32,
    first: u32,
}

// SAFETY: plain numbers, passed by value as a kernel's parameter.
unsafe impl<const K: usize, const P: usize> DeviceRepr for Table<K, P> {}

// The sizes nvcc gives the kernels' first parameter (`.param .align 8 .b8 ..._param_0[N]` in
// sum_squares.ptx, ema.ptx and adamw.ptx): the layouts agree.
const _: () = assert!(
    std::mem::size_of::<Table<1, 240>>() == 2888
        && std::mem::size_of::<Table<2, 190>>() == 3808
        && std::mem::size_of::<Table<4, 100>>() == 3608
);

impl<const K: usize, const P: usize> Table<K, P> {
    /// Within the 4 KiB of kernel parameters every CUDA device takes (with room for scalars).
    const FITS: () = assert!(std::mem::size_of::<Self>() <= 3840);

    /// Pieces in this launch.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The launch of this table: one block per piece.
    pub(crate) fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.count, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The device addresses of K parallel lists of f32 tensors (each item: K tensors of one length,
/// contiguous, on one CUDA device), held for as long as the launches need them: the storage
/// guards keep the tensors alive and the stream guards record their use once dropped.
pub(crate) struct Lists<'a> {
    pub(crate) dev: CudaDevice,
    stream: Arc<CudaStream>,
    views: Vec<CudaView<'a, f32>>,
}

/// `ts` made contiguous where they are not (a no-op clone where they are), to be held while
/// their storages are read.
pub(crate) fn contiguous(ts: &[&Tensor]) -> candle_core::Result<Vec<Tensor>> {
    ts.iter().map(|t| t.contiguous()).collect()
}

impl<'a> Lists<'a> {
    /// The views of `guards` (from `Tensor::storage_and_layout` of contiguous tensors).
    pub(crate) fn new(
        guards: &'a [(
            impl std::ops::Deref<Target = Storage>,
            &'a candle_core::Layout,
        )],
    ) -> candle_core::Result<Self> {
        let mut views = Vec::with_capacity(guards.len());
        let mut dev: Option<CudaDevice> = None;
        for (st, l) in guards {
            let Storage::Cuda(cs) = &**st else {
                candle_core::bail!("multi-tensor launch: CUDA tensors expected")
            };
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("multi-tensor launch: contiguous tensors expected")
            };
            if dev.as_ref().is_some_and(|d| d.id() != cs.device.id()) {
                candle_core::bail!("multi-tensor launch: tensors on different devices")
            }
            dev.get_or_insert_with(|| cs.device.clone());
            views.push(cs.as_cuda_slice::<f32>()?.slice(a..b));
        }
        let Some(dev) = dev else {
            candle_core::bail!("multi-tensor launch: no tensors")
        };
        let stream = dev.cuda_stream();
        Ok(Self { dev, stream, views })
    }

    /// The launch tables over items of K consecutive views each (views `K*i .. K*i + K` are
    /// item i's lists, all of one length), and the stream guards to drop once they are queued.
    pub(crate) fn tables<const K: usize, const P: usize>(
        &self,
    ) -> candle_core::Result<(Vec<Table<K, P>>, Vec<SyncOnDrop<'_>>)> {
        #[allow(clippy::let_unit_value)]
        let () = Table::<K, P>::FITS;
        let stream = &self.stream;
        let mut guards = Vec::with_capacity(self.views.len());
        let mut pieces: Vec<([u64; K], u32)> = Vec::new();
        for item in self.views.chunks(K) {
            let n = item[0].len();
            if item.len() != K || item.iter().any(|v| v.len() != n) {
                candle_core::bail!("multi-tensor launch: lists of different lengths")
            }
            let mut base = [0u64; K];
            for (b, v) in base.iter_mut().zip(item) {
                let (p, g) = v.device_ptr(stream);
                *b = p;
                guards.push(g);
            }
            for s in (0..n).step_by(PIECE) {
                pieces.push((base.map(|p| p + 4 * s as u64), PIECE.min(n - s) as u32));
            }
        }
        let tables = pieces
            .chunks(P)
            .enumerate()
            .map(|(k, chunk)| {
                let mut t = Table {
                    ptr: [[0; P]; K],
                    len: [0; P],
                    count: chunk.len() as u32,
                    first: (k * P) as u32,
                };
                for (i, (ps, n)) in chunk.iter().enumerate() {
                    for (list, &p) in ps.iter().enumerate() {
                        t.ptr[list][i] = p;
                    }
                    t.len[i] = *n;
                }
                t
            })
            .collect();
        Ok((tables, guards))
    }
}
