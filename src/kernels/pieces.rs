//! Multi-tensor CUDA launches (PyTorch's `multi_tensor_apply`): K parallel lists of f32
//! tensors (say weights, gradients, moments) cut into pieces of at most 2^16 elements, up to P
//! pieces per launch passed in the kernel's parameters (no table copied to the device), one
//! block per piece. For the per-step work over every parameter tensor, where one launch per
//! tensor and per Candle op made the mnist preset's GPU step launch-bound: the gradient norm's
//! sum of squares, AdamW and the EMA. The kernels' side is src/kernels/cuda/pieces.cuh.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use candle_core::Tensor;

/// Whether a multi-tensor launch takes `ts`: at least one tensor, all f32 on one CUDA device
/// in a CUDA build, and with `switched` only unless `DIFFUSE_CUDA_KERNELS=0`.
pub(crate) fn takes(ts: &[&Tensor], switched: bool) -> bool {
    ts.first()
        .is_some_and(|f| ts.iter().all(|t| t.device().same_device(f.device())))
        && super::cuda_f32(ts, switched)
}

/// Elements per piece (one block's share).
const PIECE: usize = 1 << 16;
/// Threads per block.
#[cfg(feature = "cuda")]
const THREADS: u32 = 256;

/// One launch's pieces, laid out as `Pieces<K, P>` in pieces.cuh: K arrays of P addresses,
/// the lengths, how many pieces, and the index of the first (for per-piece outputs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table<const K: usize, const P: usize> {
    ptr: [[u64; P]; K],
    len: [u32; P],
    count: u32,
    first: u32,
}

impl<const K: usize, const P: usize> Table<K, P> {
    /// Pieces in this launch.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }
}

/// The launch tables of `items` (K f32 addresses and their common length each), cut into
/// pieces of at most PIECE elements in item order, P pieces a table.
fn cut<const K: usize, const P: usize>(items: &[([u64; K], usize)]) -> Vec<Table<K, P>> {
    let pieces: Vec<([u64; K], u32)> = items
        .iter()
        .flat_map(|&(base, n)| {
            (0..n)
                .step_by(PIECE)
                .map(move |s| (base.map(|p| p + 4 * s as u64), PIECE.min(n - s) as u32))
        })
        .collect();
    pieces
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
        .collect()
}

#[cfg(feature = "cuda")]
pub(crate) use device::{contiguous, Lists};

#[cfg(feature = "cuda")]
mod device {
    use super::{cut, Table, THREADS};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchConfig, SyncOnDrop,
    };
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{Storage, Tensor};
    use std::sync::Arc;

    // SAFETY: plain numbers, passed by value as a kernel's parameter.
    unsafe impl<const K: usize, const P: usize> DeviceRepr for Table<K, P> {}

    // The sizes nvcc gave each kernel's first parameter (build.rs reads them from the PTX):
    // the Rust and C++ layouts agree for the K and P each caller uses.
    mod ptx {
        include!(concat!(env!("OUT_DIR"), "/ptx_params.rs"));
    }
    const _: () = assert!(
        std::mem::size_of::<Table<1, 240>>() == ptx::DIFFUSE_SUM_SQUARES_PART_F32
            && std::mem::size_of::<Table<2, 190>>() == ptx::DIFFUSE_EMA_F32
            && std::mem::size_of::<Table<4, 100>>() == ptx::DIFFUSE_ADAMW_F32
            // With the kernels' other parameters, within the 4 KiB every device takes.
            && ptx::DIFFUSE_ADAMW_F32 + 48 <= 4096
            && ptx::DIFFUSE_EMA_F32 + 8 <= 4096
    );

    impl<const K: usize, const P: usize> Table<K, P> {
        /// The launch of this table: one block per piece.
        pub(crate) fn config(&self) -> LaunchConfig {
            LaunchConfig {
                grid_dim: (self.count, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            }
        }
    }

    /// `ts` made contiguous where they are not (a no-op clone where they are, so an in-place
    /// kernel writes the tensor itself), to be held while their storages are read.
    pub(crate) fn contiguous(ts: &[&Tensor]) -> candle_core::Result<Vec<Tensor>> {
        ts.iter().map(|t| t.contiguous()).collect()
    }

    /// The device addresses of K parallel lists of f32 tensors (each item: K tensors of one
    /// length, contiguous, on one CUDA device), held for as long as the launches need them.
    ///
    /// Two assumptions, both Candle's: one stream per device and thread (Candle's per-thread
    /// stream), so every launch is ordered after what wrote its inputs, and the in-place
    /// kernels may write through addresses taken from read guards; and several views may share
    /// one storage (AdamW's m and v, the multi-process path's gradients, narrows of one
    /// buffer), which takes that storage's read lock more than once on this thread, as
    /// Candle's own `x + x` does: parking_lot allows it while no writer waits, and no other
    /// thread touches the training's tensors.
    pub(crate) struct Lists<'a> {
        pub(crate) dev: CudaDevice,
        stream: Arc<CudaStream>,
        views: Vec<CudaView<'a, f32>>,
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

        /// The launch tables over items of K consecutive views each (views `K*i .. K*i + K`
        /// are item i's lists, all of one length), and the stream guards to drop once they are
        /// queued.
        pub(crate) fn tables<const K: usize, const P: usize>(
            &self,
        ) -> candle_core::Result<(Vec<Table<K, P>>, Vec<SyncOnDrop<'_>>)> {
            let mut guards = Vec::with_capacity(self.views.len());
            let mut items: Vec<([u64; K], usize)> = Vec::new();
            for item in self.views.chunks(K) {
                let n = item[0].len();
                if item.len() != K || item.iter().any(|v| v.len() != n) {
                    candle_core::bail!("multi-tensor launch: lists of different lengths")
                }
                let mut base = [0u64; K];
                for (b, v) in base.iter_mut().zip(item) {
                    let (p, g) = v.device_ptr(&self.stream);
                    *b = p;
                    guards.push(g);
                }
                items.push((base, n));
            }
            Ok((cut(&items), guards))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cut, Table, PIECE};

    /// Every element of every item is covered exactly once, in item order, by pieces of at
    /// most PIECE elements at the right addresses of each list; tables hold at most P pieces
    /// and `first` counts the pieces before them; empty items give no piece.
    #[test]
    fn pieces_cover_every_element_once_in_order() {
        const P: usize = 3;
        let lens = [5, 0, PIECE, 2 * PIECE + 7, 1, PIECE - 1, 3 * PIECE];
        let items: Vec<([u64; 2], usize)> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| ([(i as u64) << 40, ((i as u64) << 40) + (1 << 36)], n))
            .collect();
        let tables: Vec<Table<2, P>> = cut(&items);
        let mut want = Vec::new();
        for (base, n) in &items {
            let mut s = 0;
            while s < *n {
                let len = PIECE.min(n - s);
                want.push((base.map(|b| b + 4 * s as u64), len as u32));
                s += len;
            }
        }
        let mut got = Vec::new();
        for (k, t) in tables.iter().enumerate() {
            assert!(t.count as usize <= P && t.count > 0);
            assert_eq!(t.first as usize, k * P);
            for i in 0..t.count as usize {
                got.push(([t.ptr[0][i], t.ptr[1][i]], t.len[i]));
            }
        }
        assert_eq!(got, want);
        assert_eq!(got.len(), 1 + 1 + 3 + 1 + 1 + 3);
        assert!(cut::<1, 4>(&[([0], 0)]).is_empty());
    }
}
