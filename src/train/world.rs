//! The processes one training run spans: one (the default), or an MPI world when built with
//! `--features mpi` and started by a launcher (`mpirun -np N`, `srun`). Every rank builds the
//! same model from the seed and draws the same global batch, t and noise (so the optimisation
//! is the single-process one up to summation order); each computes the gradient of its share of
//! the batch, one all-reduce averages them, and every rank then clips and steps identically.
//! Rank 0 alone writes.
use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::time::{Duration, Instant};

pub struct World {
    rank: usize,
    size: usize,
    /// Time spent in collectives (all-reduces and barriers), and gradient all-reduces done.
    comm_time: std::cell::Cell<Duration>,
    steps: std::cell::Cell<usize>,
    #[cfg(feature = "mpi")]
    mpi: Option<(
        mpi::environment::Universe,
        mpi::topology::SimpleCommunicator,
    )>,
    /// The GPUs' communicator, made at the first all-reduce of CUDA gradients.
    #[cfg(feature = "nccl")]
    nccl: std::cell::OnceCell<nccl::Comm>,
}

/// Environment variables a launcher sets (Open MPI, MPICH/Hydra, PMIx, Slurm).
#[cfg(feature = "mpi")]
const LAUNCHER_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_RANK",
    "SLURM_STEP_NUM_TASKS",
];

impl World {
    /// One process: no communication.
    pub fn single() -> Self {
        Self {
            rank: 0,
            size: 1,
            comm_time: Default::default(),
            steps: Default::default(),
            #[cfg(feature = "mpi")]
            mpi: None,
            #[cfg(feature = "nccl")]
            nccl: Default::default(),
        }
    }

    /// The launcher's world when built with MPI and started by a launcher; else one process.
    pub fn from_env() -> Result<Self> {
        #[cfg(feature = "mpi")]
        if LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            use mpi::traits::Communicator;
            let universe = mpi::initialize()
                .ok_or_else(|| Error::Runtime("MPI could not be initialised".into()))?;
            let comm = universe.world();
            return Ok(Self {
                rank: comm.rank() as usize,
                size: comm.size() as usize,
                comm_time: Default::default(),
                steps: Default::default(),
                mpi: Some((universe, comm)),
                #[cfg(feature = "nccl")]
                nccl: Default::default(),
            });
        }
        Ok(Self::single())
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether a launcher started this process (then every collective runs, even at size 1,
    /// so a one-process launch exercises the communication path).
    pub fn launched(&self) -> bool {
        #[cfg(feature = "mpi")]
        if self.mpi.is_some() {
            return true;
        }
        false
    }

    /// Whether this process writes (rank 0).
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Time spent communicating per training step so far.
    pub fn comm_per_step(&self) -> Duration {
        self.comm_time.get() / self.steps.get().max(1) as u32
    }

    /// The rows of a global batch of `b` this rank computes: (first, count). `b` must divide
    /// by the world's size (checked when training starts).
    pub fn share(&self, b: usize) -> (usize, usize) {
        let n = b / self.size;
        (self.rank * n, n)
    }

    /// Sum `values` over ranks, in place.
    pub fn sum_in_place<T>(&self, values: &mut [T]) -> Result<()>
    where
        T: Copy + SumOp,
    {
        if !self.launched() {
            return Ok(());
        }
        let t0 = Instant::now();
        T::all_sum(self, values)?;
        self.comm_time.set(self.comm_time.get() + t0.elapsed());
        Ok(())
    }

    /// Whether `flag` is set on any rank (so every rank stops at the same step).
    pub fn any(&self, flag: bool) -> Result<bool> {
        let mut v = [u8::from(flag) as f64];
        self.sum_in_place(&mut v)?;
        Ok(v[0] > 0.0)
    }

    /// Wait for every rank.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some((_, comm)) = &self.mpi {
            use mpi::traits::CommunicatorCollectives;
            let t0 = Instant::now();
            comm.barrier();
            self.comm_time.set(self.comm_time.get() + t0.elapsed());
        }
    }

    /// End every rank of the job (after this rank's error was reported).
    pub fn abort(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some((_, comm)) = &self.mpi {
            use mpi::traits::Communicator;
            comm.abort(code);
        }
        let _ = code;
    }

    /// Replace each of `vars`' gradients in `grads` by its mean over ranks: one all-reduce of
    /// every gradient laid end to end (f32, in the vars' order, the same on every rank); on
    /// the GPUs with NCCL for CUDA gradients in builds with `--features nccl`, else through
    /// host memory with MPI.
    pub fn average_grads(&self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<()> {
        if !self.launched() {
            return Ok(());
        }
        self.steps.set(self.steps.get() + 1);
        #[cfg(feature = "nccl")]
        if let Some((_, v)) = vars.first() {
            if let candle_core::Device::Cuda(dev) = v.device() {
                return self.average_grads_nccl(vars, grads, &dev.clone());
            }
        }
        let mut flat: Vec<f32> = Vec::new();
        let mut shapes = Vec::with_capacity(vars.len());
        for (name, v) in vars {
            let g = grads
                .get(v.as_tensor())
                .ok_or_else(|| Error::Runtime(format!("no gradient for {name}")))?;
            shapes.push((g.shape().clone(), g.dtype(), g.device().clone()));
            flat.extend(
                g.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        self.sum_in_place(&mut flat)?;
        let inv = 1.0 / self.size as f32;
        let mut at = 0;
        for ((_, v), (shape, dtype, device)) in vars.iter().zip(shapes) {
            let n = shape.elem_count();
            let mean: Vec<f32> = flat[at..at + n].iter().map(|x| x * inv).collect();
            at += n;
            let g = Tensor::from_vec(mean, shape, &device)?.to_dtype(dtype)?;
            grads.insert(v.as_tensor(), g);
        }
        Ok(())
    }
}

#[cfg(feature = "nccl")]
impl World {
    fn average_grads_nccl(
        &self,
        vars: &[(String, Var)],
        grads: &mut GradStore,
        dev: &candle_core::CudaDevice,
    ) -> Result<()> {
        let t0 = Instant::now();
        let comm = match self.nccl.get() {
            Some(c) => c,
            None => {
                let c = nccl::comm(self, dev)?;
                self.nccl.get_or_init(|| c)
            }
        };
        let mut parts = Vec::with_capacity(vars.len());
        for (name, v) in vars {
            let g = grads
                .get(v.as_tensor())
                .ok_or_else(|| Error::Runtime(format!("no gradient for {name}")))?;
            parts.push(g.to_dtype(candle_core::DType::F32)?.flatten_all()?);
        }
        let flat = Tensor::cat(&parts, 0)?;
        let mean = nccl::average(comm, &flat, dev)?;
        let mut at = 0;
        for (_, v) in vars {
            let g = v.as_tensor();
            let n = g.elem_count();
            let m = mean
                .narrow(0, at, n)?
                .reshape(g.shape())?
                .to_dtype(g.dtype())?;
            at += n;
            grads.insert(g, m);
        }
        // Wait for the stream so the time counted is the all-reduce's.
        candle_core::Device::Cuda(dev.clone()).synchronize()?;
        self.comm_time.set(self.comm_time.get() + t0.elapsed());
        Ok(())
    }
}

/// The gradient all-reduce on the GPUs (cudarc's NCCL bindings through Candle): MPI only
/// carries NCCL's unique id from rank 0 to the others.
#[cfg(feature = "nccl")]
mod nccl {
    use super::World;
    use crate::error::{Error, Result};
    pub use candle_core::cuda::cudarc::nccl::safe::Comm;
    use candle_core::cuda::cudarc::nccl::safe::{Id, ReduceOp};
    use candle_core::{CudaDevice, CudaStorage, Storage, Tensor};

    fn err(e: impl std::fmt::Debug) -> Error {
        Error::Runtime(format!("NCCL: {e:?}"))
    }

    /// One communicator over every rank's GPU.
    pub fn comm(world: &World, dev: &CudaDevice) -> Result<Comm> {
        use mpi::traits::*;
        let (_, mpi_comm) = world
            .mpi
            .as_ref()
            .ok_or_else(|| Error::Runtime("NCCL needs an MPI launcher".into()))?;
        let mut buf = [0u8; 128];
        if world.rank == 0 {
            let id = Id::new().map_err(err)?;
            for (b, c) in buf.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        mpi_comm.process_at_rank(0).broadcast_into(&mut buf[..]);
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(&buf) {
            *c = *b as std::ffi::c_char;
        }
        Comm::from_rank(
            dev.cuda_stream(),
            world.rank,
            world.size,
            Id::uninit(internal),
        )
        .map_err(err)
    }

    /// The mean over ranks of a flat f32 tensor on this rank's GPU.
    pub fn average(comm: &Comm, flat: &Tensor, dev: &CudaDevice) -> Result<Tensor> {
        let n = flat.elem_count();
        let flat = flat.contiguous()?;
        let (st, layout) = flat.storage_and_layout();
        let Storage::Cuda(cs) = &*st else {
            return Err(Error::Runtime(
                "NCCL: gradients not on a CUDA device".into(),
            ));
        };
        let start = layout.start_offset();
        let src = cs.as_cuda_slice::<f32>()?.slice(start..start + n);
        let mut dst = dev.alloc_zeros::<f32>(n)?;
        comm.all_reduce(&src, &mut dst, &ReduceOp::Avg)
            .map_err(err)?;
        drop(st);
        Ok(Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(dst, dev.clone())),
            n,
            candle_core::op::BackpropOp::none(),
            false,
        ))
    }
}

/// Element types the world sums.
pub trait SumOp: Sized {
    fn all_sum(world: &World, values: &mut [Self]) -> Result<()>;
}

macro_rules! sum_op {
    ($t:ty) => {
        impl SumOp for $t {
            #[allow(unused_variables)]
            fn all_sum(world: &World, values: &mut [Self]) -> Result<()> {
                #[cfg(feature = "mpi")]
                if let Some((_, comm)) = &world.mpi {
                    use mpi::collective::SystemOperation;
                    use mpi::traits::CommunicatorCollectives;
                    let send = values.to_vec();
                    comm.all_reduce_into(&send[..], values, SystemOperation::sum());
                    return Ok(());
                }
                if world.size > 1 {
                    return Err(Error::Runtime("a multi-process world without MPI".into()));
                }
                Ok(())
            }
        }
    };
}
sum_op!(f32);
sum_op!(f64);
