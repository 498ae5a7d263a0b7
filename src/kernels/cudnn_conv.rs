//! conv2d on CUDA through cuDNN, in builds with `FEATURES=cudnn`: the forward and both
//! gradients as cuDNN's own convolutions (implicit GEMMs that write no im2col columns: the
//! kernels PyTorch's convolutions run), in place of our im2col + cuBLAS path
//! (src/kernels/cuda_conv.rs), which stays the path of the default CUDA build, of shapes cuDNN
//! is not given, and of `DIFFUSE_CUDNN=0`.
//!
//! Candle's cuDNN conv2d sets everything up on every call (descriptors, the algorithm
//! heuristic, a zeroed workspace) and has no backward of its own (its gradients ran as more
//! forward convolutions of odd shapes): on an H200 it left the GPU 89% idle in our cifar10 train
//! step (docs/gpu.md). Here each shape's descriptors and algorithms are chosen once and
//! kept (per thread and device: a cuDNN handle is not thread-safe), the workspace is one buffer
//! that only grows, and the algorithm is the heuristics' fastest deterministic one whose
//! workspace is at most 1 GiB, so a seed reproduces a run on the same device
//! (`DIFFUSE_CUDNN_DETERMINISTIC=0` lifts that, as PyTorch's default does). Math: FMA only
//! (f32 throughout, what diffusers gets with TF32 off; FFT or Winograd algorithms may round
//! differently from im2col) unless Candle's TF32 switch is on (`DIFFUSE_TF32=1`), when cuDNN's
//! default math may use TF32 tensor cores, as PyTorch's convolutions do by default. What cuDNN
//! cannot set up or run (short of a failed kernel) falls back to our path with a warning.
#![cfg_attr(not(feature = "cudnn"), allow(dead_code))]

/// The largest workspace an algorithm may ask for (bytes); the column budget's size.
const WORKSPACE_CAP: usize = 1 << 30;

/// The element type of a cuDNN convolution's tensors (its sums are f32 whatever the type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Data {
    F32,
    F16,
    Bf16,
}

/// The math an entry of cuDNN's heuristic list runs with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Math {
    /// FMA only: f32 throughout.
    Fma,
    /// cuDNN's default: TF32 tensor cores allowed for f32 data (Ampere and later).
    Default,
    /// Tensor cores (TF32 for f32 data).
    TensorOp,
    /// Tensor cores, allowed to convert f32 down to f16: never taken.
    Conversion,
}

/// One entry of cuDNN's heuristic list (fastest first), as the choice reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    /// cuDNN can run it for these descriptors.
    ok: bool,
    /// Bitwise reproducible (no atomics in its sums).
    deterministic: bool,
    math: Math,
}

/// What a run allows the choice to take.
#[derive(Clone, Copy, Debug)]
struct Allowed {
    /// Tensor cores: TF32 for f32 data (`DIFFUSE_TF32=1`), always for half precision.
    tensor_cores: bool,
    /// Algorithms whose sums use atomics, so a seed no longer reproduces a run bit for bit:
    /// only with `DIFFUSE_CUDNN_DETERMINISTIC=0` (PyTorch's default, `cudnn.deterministic`
    /// False; the GPU check measures what it buys).
    nondeterministic: bool,
}

impl Candidate {
    /// Whether the choice may take it: it runs, it is deterministic unless allowed not to be,
    /// and tensor cores (TF32 for f32 data) only when allowed.
    fn usable(&self, allowed: Allowed) -> bool {
        self.ok
            && (self.deterministic || allowed.nondeterministic)
            && match self.math {
                Math::Fma => true,
                Math::Default | Math::TensorOp => allowed.tensor_cores,
                Math::Conversion => false,
            }
    }
}

/// The first usable candidate (in the heuristics' order) whose workspace, as `workspace` gives
/// it (None: cuDNN refused the query), is within `cap`.
fn choose(
    list: &[Candidate],
    allowed: Allowed,
    cap: usize,
    mut workspace: impl FnMut(usize) -> Option<usize>,
) -> Option<(usize, usize)> {
    list.iter()
        .enumerate()
        .filter(|(_, c)| c.usable(allowed))
        .find_map(|(i, _)| workspace(i).filter(|&w| w <= cap).map(|w| (i, w)))
}

#[cfg(feature = "cudnn")]
pub(crate) use device::{bwd_input, bwd_weight, fwd, half_conv2d};

/// Whether this process's CUDA convolutions go through cuDNN: a cuDNN build, its library (9
/// or later) loaded, and neither `DIFFUSE_CUDNN=0` nor `DIFFUSE_CUDA_KERNELS=0`.
pub(crate) fn in_use() -> bool {
    #[cfg(feature = "cudnn")]
    return device::enabled() && super::cuda::switched();
    #[cfg(not(feature = "cudnn"))]
    false
}

/// cuDNN convolution calls so far in this process (each pass counts one): what the device test
/// reads to show that a cuDNN build's convolutions are cuDNN's (one test at a time: the GPU
/// check runs it with `--test-threads 1`).
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn calls() -> usize {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

fn counted<T>(ran: Option<T>) -> Option<T> {
    if ran.is_some() {
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    ran
}

#[cfg(feature = "cudnn")]
mod device {
    use super::super::conv::Geom;
    use super::{choose, Allowed, Candidate, Data, Math, WORKSPACE_CAP};
    use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
    };
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use candle_core::{CustomOp2, DType, Layout, Shape, Tensor};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::ffi::c_void;
    use std::sync::{Arc, OnceLock};

    type Res<T> = Result<T, result::CudnnError>;

    /// Whether this process uses cuDNN: not with `DIFFUSE_CUDNN=0`, nor where the library does
    /// not load or is older than 9 (cudarc's bindings are cuDNN 9's: an older library's status
    /// codes would not be valid values of them). One warning; our im2col path then runs.
    pub(super) fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            if std::env::var("DIFFUSE_CUDNN").is_ok_and(|v| v == "0") {
                return false;
            }
            // SAFETY: only tries to open the library (dlopen).
            if !unsafe { sys::is_culib_present() } {
                tracing::warn!(
                    "cuDNN (libcudnn) not found: convolutions run on diffuse's own CUDA path"
                );
                return false;
            }
            let v = result::get_version();
            if v < 90000 {
                tracing::warn!(
                    "cuDNN {v} is older than 9: convolutions run on diffuse's own CUDA path"
                );
                return false;
            }
            tracing::info!("cuDNN {v}: CUDA convolutions run through it");
            true
        })
    }

    /// `DIFFUSE_CUDNN_DETERMINISTIC=0`: the heuristics' non-deterministic algorithms may be
    /// taken too (read once; said once, as runs are then not bitwise reproducible).
    fn nondeterministic() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var("DIFFUSE_CUDNN_DETERMINISTIC").is_ok_and(|v| v == "0");
            if on {
                tracing::warn!(
                    "DIFFUSE_CUDNN_DETERMINISTIC=0: cuDNN may sum gradients with atomics, so a seed no longer reproduces a run bit for bit"
                );
            }
            on
        })
    }

    struct Handle(sys::cudnnHandle_t);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: created by create_handle, destroyed once.
            let _ = unsafe { result::destroy_handle(self.0) };
        }
    }
    struct Tensor4(sys::cudnnTensorDescriptor_t);
    impl Drop for Tensor4 {
        fn drop(&mut self) {
            // SAFETY: created by create_tensor_descriptor, destroyed once.
            let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
        }
    }
    struct Filter4(sys::cudnnFilterDescriptor_t);
    impl Drop for Filter4 {
        fn drop(&mut self) {
            // SAFETY: created by create_filter_descriptor, destroyed once.
            let _ = unsafe { result::destroy_filter_descriptor(self.0) };
        }
    }
    struct Conv(sys::cudnnConvolutionDescriptor_t);
    impl Drop for Conv {
        fn drop(&mut self) {
            // SAFETY: created by create_convolution_descriptor, destroyed once.
            let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
        }
    }

    fn data_type(d: Data) -> sys::cudnnDataType_t {
        match d {
            Data::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            Data::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            Data::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        }
    }

    fn tensor(dims: [usize; 4], d: Data) -> Res<Tensor4> {
        let t = Tensor4(result::create_tensor_descriptor()?);
        // SAFETY: a live descriptor; the dims fit i32 (`fits_cudnn`).
        unsafe {
            result::set_tensor4d_descriptor(
                t.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                data_type(d),
                dims.map(|d| d as i32),
            )
        }?;
        Ok(t)
    }

    /// A convolution descriptor for `g` (f32 accumulation, cross-correlation as conv2d) with
    /// the math the heuristics are asked under: f32 FMA only, or cuDNN's default with TF32;
    /// tensor cores for half precision (as PyTorch sets them).
    fn conv(g: &Geom, tf32: bool, d: Data) -> Res<Conv> {
        let c = Conv(result::create_convolution_descriptor()?);
        let (p, s) = (g.pad as i32, g.stride as i32);
        let math = match (d, tf32) {
            (Data::F32, true) => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            (Data::F32, false) => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        };
        // SAFETY: a live descriptor.
        unsafe {
            result::set_convolution2d_descriptor(
                c.0,
                p,
                p,
                s,
                s,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )?;
            result::set_convolution_math_type(c.0, math)?;
        }
        Ok(c)
    }

    fn candidate(
        status: sys::cudnnStatus_t,
        det: sys::cudnnDeterminism_t,
        math: sys::cudnnMathType_t,
    ) -> Candidate {
        use sys::cudnnMathType_t as M;
        Candidate {
            ok: status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
            deterministic: det == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC,
            math: match math {
                M::CUDNN_FMA_MATH => Math::Fma,
                M::CUDNN_DEFAULT_MATH => Math::Default,
                M::CUDNN_TENSOR_OP_MATH => Math::TensorOp,
                _ => Math::Conversion,
            },
        }
    }

    /// `g` as the log lines name it: n x ci x h x w -> co, kernel, stride, padding.
    fn shape(g: &Geom) -> String {
        format!(
            "{}x{}x{}x{} -> {} {}x{} s{} p{}",
            g.n, g.ci, g.h, g.w, g.co, g.kh, g.kw, g.stride, g.pad
        )
    }

    /// One pass's choice: its descriptor (math type set), algorithm and workspace bytes.
    struct Chosen<A> {
        conv: Conv,
        algo: A,
        workspace: usize,
    }

    /// The three passes, as `Plan::refused` indexes them.
    #[derive(Clone, Copy, Debug)]
    enum Pass {
        Fwd = 0,
        Input = 1,
        Filter = 2,
    }

    /// A shape's descriptors and each pass's choice (None: cuDNN offered nothing usable, and
    /// that pass runs on our path; `refused` too once cuDNN declined to run the choice).
    struct Plan {
        x: Tensor4,
        w: Filter4,
        y: Tensor4,
        fwd: Option<Chosen<sys::cudnnConvolutionFwdAlgo_t>>,
        data: Option<Chosen<sys::cudnnConvolutionBwdDataAlgo_t>>,
        filter: Option<Chosen<sys::cudnnConvolutionBwdFilterAlgo_t>>,
        refused: [bool; 3],
    }

    /// Entries asked of each heuristic: more than any pass has algorithms, as an algorithm may
    /// come back once per math.
    const LIST: usize = 16;

    /// Runs cuDNN's heuristic (`list` fills up to LIST entries and says how many) and keeps the
    /// choice; `size` asks the workspace of an algorithm under the descriptor's current math.
    fn pick<A: Copy + std::fmt::Debug, P>(
        g: &Geom,
        tf32: bool,
        d: Data,
        pass: Pass,
        list: impl FnOnce(&Conv, &mut [P; LIST]) -> Res<usize>,
        read: impl Fn(
            &P,
        ) -> (
            A,
            sys::cudnnStatus_t,
            sys::cudnnDeterminism_t,
            sys::cudnnMathType_t,
        ),
        size: impl Fn(&Conv, A) -> Res<usize>,
    ) -> Res<Option<Chosen<A>>> {
        let c = conv(g, tf32, d)?;
        let allowed = Allowed {
            // Half precision runs on tensor cores whatever TF32 says (f16 entries never convert).
            tensor_cores: tf32 || d != Data::F32,
            nondeterministic: nondeterministic(),
        };
        // SAFETY: a plain C struct of enums and numbers, all-zero valid; cuDNN fills it.
        let mut perf: [P; LIST] = unsafe { std::mem::zeroed() };
        let n = list(&c, &mut perf)?.min(LIST);
        let entries: Vec<_> = perf[..n].iter().map(&read).collect();
        let cands: Vec<_> = entries.iter().map(|e| candidate(e.1, e.2, e.3)).collect();
        // Each candidate sized under its own math (FMA, by `usable`, unless TF32 is on).
        let found = choose(&cands, allowed, WORKSPACE_CAP, |i| {
            // SAFETY: a live descriptor.
            unsafe { result::set_convolution_math_type(c.0, entries[i].3) }.ok()?;
            size(&c, entries[i].0).ok()
        });
        // What was chosen and what the heuristics put first: the GPU check's record of what
        // determinism and the math cost (RUST_LOG=diffuse::kernels::cudnn_conv=debug).
        let first = entries.first().map_or("none".into(), |e| {
            format!("{:?} {:?} {:?} {:?}", e.0, e.3, e.2, e.1)
        });
        let taken = match found {
            Some((i, ws)) => format!(
                "{:?} {:?} {:?} (entry {i} of {n}, workspace {} KiB)",
                entries[i].0,
                entries[i].3,
                entries[i].2,
                ws.div_ceil(1024)
            ),
            None => format!("none of {n} usable, our path"),
        };
        tracing::debug!(
            "cuDNN {pass:?} {d:?} tf32={tf32} nondet={} {}: {taken}; first {first}",
            allowed.nondeterministic,
            shape(g)
        );
        let Some((i, workspace)) = found else {
            return Ok(None);
        };
        // SAFETY: a live descriptor; the winner's math, which its workspace was sized for.
        unsafe { result::set_convolution_math_type(c.0, entries[i].3) }?;
        Ok(Some(Chosen {
            conv: c,
            algo: entries[i].0,
            workspace,
        }))
    }

    impl Plan {
        /// The descriptors and choices of `g` in `d`; the gradients' only for f32 (half
        /// precision is for sampling).
        fn new(h: sys::cudnnHandle_t, g: &Geom, tf32: bool, d: Data) -> Res<Self> {
            let x = tensor([g.n, g.ci, g.h, g.w], d)?;
            let y = tensor([g.n, g.co, g.oh, g.ow], d)?;
            let w = Filter4(result::create_filter_descriptor()?);
            // SAFETY: a live descriptor; the dims fit i32.
            unsafe {
                result::set_filter4d_descriptor(
                    w.0,
                    data_type(d),
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    [g.co, g.ci, g.kh, g.kw].map(|d| d as i32),
                )
            }?;
            let mut count = 0;
            let req = LIST as i32;
            // SAFETY (the three heuristics and workspace queries): live handle and
            // descriptors, `perf` holds the LIST entries requested.
            let fwd = pick(
                g,
                tf32,
                d,
                Pass::Fwd,
                |c, perf| unsafe {
                    result::get_convolution_forward_algorithm(
                        h,
                        x.0,
                        w.0,
                        c.0,
                        y.0,
                        req,
                        &mut count,
                        perf.as_mut_ptr(),
                    )
                    .map(|_| count as usize)
                },
                |p: &sys::cudnnConvolutionFwdAlgoPerf_t| {
                    (p.algo, p.status, p.determinism, p.mathType)
                },
                |c, a| unsafe {
                    result::get_convolution_forward_workspace_size(h, x.0, w.0, c.0, y.0, a)
                },
            )?;
            if d != Data::F32 {
                return Ok(Self {
                    x,
                    w,
                    y,
                    fwd,
                    data: None,
                    filter: None,
                    refused: [false; 3],
                });
            }
            let data = pick(
                g,
                tf32,
                d,
                Pass::Input,
                |c, perf| unsafe {
                    result::get_convolution_backward_data_algorithm(
                        h,
                        w.0,
                        y.0,
                        c.0,
                        x.0,
                        req,
                        &mut count,
                        perf.as_mut_ptr(),
                    )
                    .map(|_| count as usize)
                },
                |p: &sys::cudnnConvolutionBwdDataAlgoPerf_t| {
                    (p.algo, p.status, p.determinism, p.mathType)
                },
                |c, a| unsafe {
                    result::get_convolution_backward_data_workspace_size(h, w.0, y.0, c.0, x.0, a)
                },
            )?;
            let filter = pick(
                g,
                tf32,
                d,
                Pass::Filter,
                |c, perf| unsafe {
                    result::get_convolution_backward_filter_algorithm(
                        h,
                        x.0,
                        y.0,
                        c.0,
                        w.0,
                        req,
                        &mut count,
                        perf.as_mut_ptr(),
                    )
                    .map(|_| count as usize)
                },
                |p: &sys::cudnnConvolutionBwdFilterAlgoPerf_t| {
                    (p.algo, p.status, p.determinism, p.mathType)
                },
                |c, a| unsafe {
                    result::get_convolution_backward_filter_workspace_size(h, x.0, y.0, c.0, w.0, a)
                },
            )?;
            Ok(Self {
                x,
                w,
                y,
                fwd,
                data,
                filter,
                refused: [false; 3],
            })
        }
    }

    /// A shape as the plans are keyed: the geometry, the math and the element type.
    type Key = ([usize; 9], bool, Data);

    /// One device's cuDNN state on this thread. Fields drop in order: plans, the workspace,
    /// the handle, then the stream, which keeps the CUDA context alive until the handle is gone.
    struct State {
        /// None: cuDNN could not set the shape up (warned; our path runs it).
        plans: HashMap<Key, Option<Plan>>,
        workspace: Option<CudaSlice<u8>>,
        handle: Handle,
        _stream: Arc<CudaStream>,
    }

    thread_local! {
        /// None for a device where cuDNN could not start (warned once; our path runs).
        static STATE: RefCell<HashMap<DeviceId, Option<State>>> = RefCell::new(HashMap::new());
    }

    fn start(dev: &CudaDevice) -> Res<State> {
        let stream = dev.cuda_stream();
        let handle = Handle(result::create_handle()?);
        // SAFETY: a live handle and Candle's stream, kept alive by the state.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }?;
        Ok(State {
            plans: HashMap::new(),
            workspace: None,
            handle,
            _stream: stream,
        })
    }

    /// Whether cuDNN takes `g`: nothing empty, every tensor's elements within i32, which
    /// cuDNN's 4-d descriptors index.
    fn fits_cudnn(g: &Geom) -> bool {
        let lim = i32::MAX as usize;
        [g.n, g.ci, g.h, g.w, g.co, g.kh, g.kw]
            .iter()
            .all(|&d| d > 0)
            && g.n * g.ci * g.h * g.w <= lim
            && g.n * g.co * g.oh * g.ow <= lim
            && g.co * g.ci * g.kh * g.kw <= lim
            && g.stride.max(g.pad) <= lim
    }

    /// The pass's descriptors and workspace, for the launch.
    struct Ready<'a, A> {
        h: sys::cudnnHandle_t,
        plan: &'a Plan,
        chosen: &'a Chosen<A>,
        ws: (*mut c_void, usize),
    }

    /// How a launch went.
    enum Outcome<T> {
        Ran(T),
        /// Not tried (a pointer cuDNN's kernels may not take): our path runs this call.
        Skipped,
        /// cuDNN returned this status without running.
        Refused(result::CudnnError),
    }

    /// Pointers cuDNN is handed: 16-byte aligned (its vectorised kernels' loads), as fresh
    /// allocations are; a view at an odd offset goes to our path.
    fn aligned(ptrs: &[u64]) -> bool {
        ptrs.iter().all(|p| p.is_multiple_of(16))
    }

    /// A launch's status as an outcome: a failed kernel is an error (the stream is no longer
    /// trustworthy); any other refusal falls back to our path.
    fn outcome<T>(r: Res<()>, out: T) -> candle_core::Result<Outcome<T>> {
        use sys::cudnnStatus_t as S;
        match r {
            Ok(()) => Ok(Outcome::Ran(out)),
            Err(e) => match e.0 {
                S::CUDNN_STATUS_EXECUTION_FAILED
                | S::CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER
                | S::CUDNN_STATUS_EXECUTION_FAILED_CUBLAS
                | S::CUDNN_STATUS_EXECUTION_FAILED_CUDART
                | S::CUDNN_STATUS_EXECUTION_FAILED_CURAND => Err(candle_core::Error::Msg(format!(
                    "cuDNN convolution failed: {e:?}"
                ))),
                _ => Ok(Outcome::Refused(e)),
            },
        }
    }

    /// Finds (or makes) the plan of `g` on `dev`, makes the workspace big enough for `pass`
    /// (whose choice `which` reads), and hands them to `f`; Ok(None) where cuDNN is off,
    /// unavailable, or does not take this shape or pass (the caller then runs our path).
    fn with_plan<A, T>(
        dev: &CudaDevice,
        g: &Geom,
        d: Data,
        pass: Pass,
        which: impl Fn(&Plan) -> Option<&Chosen<A>>,
        f: impl FnOnce(Ready<'_, A>) -> candle_core::Result<Outcome<T>>,
    ) -> candle_core::Result<Option<T>> {
        if !enabled() || !fits_cudnn(g) {
            return Ok(None);
        }
        // cuDNN's setup and launches act on the thread's current context: this device's.
        dev.cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(candle_core::Error::wrap)?;
        // TF32 concerns f32 data only: half-precision plans are keyed without it.
        let tf32 = candle_core::cuda::gemm_reduced_precision_f32() && d == Data::F32;
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let state = s.entry(dev.id()).or_insert_with(|| match start(dev) {
                Ok(st) => Some(st),
                Err(e) => {
                    tracing::warn!(
                        "cuDNN did not start ({e:?}): convolutions run on diffuse's own CUDA path"
                    );
                    None
                }
            });
            let Some(state) = state else {
                return Ok(None);
            };
            let h = state.handle.0;
            let key = (
                [g.n, g.ci, g.h, g.w, g.co, g.kh, g.kw, g.stride, g.pad],
                tf32,
                d,
            );
            let plan = state.plans.entry(key).or_insert_with(|| {
                Plan::new(h, g, tf32, d)
                    .inspect_err(|e| {
                        tracing::warn!(
                            "cuDNN could not set up conv2d {g:?} ({e:?}): it runs on diffuse's own CUDA path"
                        )
                    })
                    .ok()
            });
            let Some(plan) = plan else {
                return Ok(None);
            };
            let Some(chosen) = which(plan).filter(|_| !plan.refused[pass as usize]) else {
                return Ok(None);
            };
            let need = chosen.workspace;
            if need > 0 && state.workspace.as_ref().is_none_or(|w| w.len() < need) {
                // Drop the old buffer first so the two never coexist.
                state.workspace = None;
                // SAFETY: cuDNN's workspace is scratch it writes before it reads.
                state.workspace = Some(unsafe { dev.alloc::<u8>(need)? });
            }
            let stream = dev.cuda_stream();
            // The guard records the workspace's use on the stream once the pass is queued.
            let (ws, _guard) = match (&mut state.workspace, need) {
                (Some(w), n) if n > 0 => {
                    let (p, guard) = w.device_ptr_mut(&stream);
                    ((p as *mut c_void, n), Some(guard))
                }
                _ => ((std::ptr::null_mut(), 0), None),
            };
            let ready = Ready {
                h,
                plan,
                chosen,
                ws,
            };
            match f(ready)? {
                Outcome::Ran(out) => Ok(Some(out)),
                Outcome::Skipped => Ok(None),
                Outcome::Refused(e) => {
                    tracing::warn!(
                        "cuDNN declined conv2d {g:?} ({pass:?}: {e:?}): it runs on diffuse's own CUDA path"
                    );
                    plan.refused[pass as usize] = true;
                    Ok(None)
                }
            }
        })
    }

    /// y = conv2d(x, w) into `y` ([n, co, oh, ow]) of element type `d` (T's): onto what `y`
    /// holds (the bias) when `accumulate`, else over it. Ok(false) where cuDNN does not take it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fwd<T: DeviceRepr>(
        dev: &CudaDevice,
        g: &Geom,
        d: Data,
        x: &CudaView<T>,
        w: &CudaView<T>,
        y: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> candle_core::Result<bool> {
        let ran = with_plan(
            dev,
            g,
            d,
            Pass::Fwd,
            |p| p.fwd.as_ref(),
            |r| {
                let (alpha, beta) = (1f32, accumulate as u8 as f32);
                let s = dev.cuda_stream();
                // The guards record each buffer's use on the stream once the pass is queued.
                let ((px, _gx), (pw, _gw), (py, _gy)) =
                    (x.device_ptr(&s), w.device_ptr(&s), y.device_ptr_mut(&s));
                if !aligned(&[px, pw, py]) {
                    return Ok(Outcome::Skipped);
                }
                // SAFETY: every pointer is a live buffer on the handle's stream (Candle's), of the
                // descriptors' shapes (the callers' contiguous views); the workspace is as large as
                // the algorithm asked.
                let r = unsafe {
                    result::convolution_forward(
                        r.h,
                        &alpha as *const f32 as *const c_void,
                        r.plan.x.0,
                        px as *const c_void,
                        r.plan.w.0,
                        pw as *const c_void,
                        r.chosen.conv.0,
                        r.chosen.algo,
                        r.ws.0,
                        r.ws.1,
                        &beta as *const f32 as *const c_void,
                        r.plan.y.0,
                        py as *mut c_void,
                    )
                };
                outcome(r, ())
            },
        )?;
        Ok(super::counted(ran).is_some())
    }

    /// A gradient pass in f32: allocates its `len` outputs and hands `raw` the pass's plan,
    /// the two inputs' pointers (`a`, `b` in the cuDNN call's order) and the output's.
    #[allow(clippy::too_many_arguments)]
    fn gradient<A>(
        dev: &CudaDevice,
        g: &Geom,
        pass: Pass,
        which: impl Fn(&Plan) -> Option<&Chosen<A>>,
        a: &CudaView<f32>,
        b: &CudaView<f32>,
        len: usize,
        raw: impl FnOnce(&Ready<'_, A>, *const c_void, *const c_void, *mut c_void) -> Res<()>,
    ) -> candle_core::Result<Option<CudaSlice<f32>>> {
        with_plan(dev, g, Data::F32, pass, which, |r| {
            // SAFETY: beta 0: cuDNN writes every element without reading it.
            let mut out = unsafe { dev.alloc::<f32>(len)? };
            let res = {
                let s = dev.cuda_stream();
                // The guards record each buffer's use on the stream once the pass is queued.
                let ((pa, _ga), (pb, _gb), (po, _go)) =
                    (a.device_ptr(&s), b.device_ptr(&s), out.device_ptr_mut(&s));
                if !aligned(&[pa, pb, po]) {
                    return Ok(Outcome::Skipped);
                }
                raw(
                    &r,
                    pa as *const c_void,
                    pb as *const c_void,
                    po as *mut c_void,
                )
            };
            outcome(res, out)
        })
        .map(super::counted)
    }

    /// cuDNN's alpha and beta for the gradients (f32 data: f32 scalars, on the host).
    const ONE: f32 = 1.0;
    const ZERO: f32 = 0.0;

    /// dx [n, ci, h, w] of conv2d(x, w) for the output gradient dy; None where cuDNN does not
    /// take it.
    pub(crate) fn bwd_input(
        dev: &CudaDevice,
        g: &Geom,
        dy: &CudaView<f32>,
        w: &CudaView<f32>,
    ) -> candle_core::Result<Option<CudaSlice<f32>>> {
        gradient(
            dev,
            g,
            Pass::Input,
            |p| p.data.as_ref(),
            w,
            dy,
            g.n * g.in_len(),
            |r, pw, pdy, pdx| {
                // SAFETY: as in `fwd`.
                unsafe {
                    result::convolution_backward_data(
                        r.h,
                        &ONE as *const f32 as *const c_void,
                        r.plan.w.0,
                        pw,
                        r.plan.y.0,
                        pdy,
                        r.chosen.conv.0,
                        r.chosen.algo,
                        r.ws.0,
                        r.ws.1,
                        &ZERO as *const f32 as *const c_void,
                        r.plan.x.0,
                        pdx,
                    )
                }
            },
        )
    }

    /// dw [co, ci, kh, kw] of conv2d(x, w) for the output gradient dy; None where cuDNN does
    /// not take it.
    pub(crate) fn bwd_weight(
        dev: &CudaDevice,
        g: &Geom,
        x: &CudaView<f32>,
        dy: &CudaView<f32>,
    ) -> candle_core::Result<Option<CudaSlice<f32>>> {
        gradient(
            dev,
            g,
            Pass::Filter,
            |p| p.filter.as_ref(),
            x,
            dy,
            g.co * g.k(),
            |r, px, pdy, pdw| {
                // SAFETY: as in `fwd`.
                unsafe {
                    result::convolution_backward_filter(
                        r.h,
                        &ONE as *const f32 as *const c_void,
                        r.plan.x.0,
                        px,
                        r.plan.y.0,
                        pdy,
                        r.chosen.conv.0,
                        r.chosen.algo,
                        r.ws.0,
                        r.ws.1,
                        &ZERO as *const f32 as *const c_void,
                        r.plan.w.0,
                        pdw,
                    )
                }
            },
        )
    }

    /// Whether `fwd` will take `g` in `d` (plan made, workspace sized): checked before an op
    /// is committed to cuDNN, since inside it there is no other path to fall back to.
    fn takes(dev: &CudaDevice, g: &Geom, d: Data) -> candle_core::Result<bool> {
        let ready = with_plan(
            dev,
            g,
            d,
            Pass::Fwd,
            |p| p.fwd.as_ref(),
            |_| Ok(Outcome::Ran(())),
        )?;
        Ok(ready.is_some())
    }

    /// conv2d of half-precision CUDA tensors (f16, bf16) that need no gradient, on cuDNN's
    /// tensor cores with the cached plans: what `sample --dtype` runs in a cuDNN build. Candle's
    /// conv2d would set cuDNN up on every call. Ok(None) where this does not apply (the caller
    /// runs Candle's conv2d): other dtypes or devices, a tensor that tracks gradients, our
    /// kernels or cuDNN switched off, a shape cuDNN does not take, a view not 16-byte aligned.
    pub(crate) fn half_conv2d(
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        let d = match x.dtype() {
            DType::F16 => Data::F16,
            DType::BF16 => Data::Bf16,
            _ => return Ok(None),
        };
        let candle_core::Device::Cuda(dev) = x.device() else {
            return Ok(None);
        };
        if w.dtype() != x.dtype()
            || !w.device().same_device(x.device())
            || x.track_op()
            || w.track_op()
            || !super::super::cuda::switched()
        {
            return Ok(None);
        }
        let Ok(g) = Geom::new(x.dims(), w.dims(), stride, pad) else {
            return Ok(None); // Candle's conv2d says what is wrong
        };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        // 8 half-precision elements: 16 bytes (allocations themselves are aligned).
        let aligned = |t: &Tensor| t.layout().start_offset().is_multiple_of(8);
        if !aligned(&x) || !aligned(&w) || !takes(dev, &g, d)? {
            return Ok(None);
        }
        match x.apply_op2_no_bwd(&w, &HalfConv { stride, pad, d }) {
            Ok(y) => Ok(Some(y)),
            // cuDNN declined at launch (now marked, so `takes` says no): Candle's conv2d.
            Err(_) if !takes(dev, &g, d)? => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The contiguous elements of a half-precision input.
    fn slice<'a, T: candle_core::cuda_backend::CudaDType>(
        s: &'a candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<CudaView<'a, T>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("cuDNN conv2d: contiguous input expected")
        };
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// `half_conv2d`'s op (forward only).
    struct HalfConv {
        stride: usize,
        pad: usize,
        d: Data,
    }

    impl HalfConv {
        fn run<T: DeviceRepr + candle_core::cuda_backend::CudaDType>(
            &self,
            g: &Geom,
            (s1, l1): (&candle_core::CudaStorage, &Layout),
            (s2, l2): (&candle_core::CudaStorage, &Layout),
        ) -> candle_core::Result<candle_core::CudaStorage> {
            let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
            let dev = &s1.device;
            // SAFETY: beta 0: cuDNN writes every element without reading it.
            let mut y = unsafe { dev.alloc::<T>(g.n * g.co * g.out_len())? };
            if !fwd(dev, g, self.d, &x, &w, &mut y, false)? {
                candle_core::bail!(
                    "cuDNN declined conv2d {g:?} in {:?} after taking it (DIFFUSE_CUDNN=0 runs Candle's)",
                    self.d
                )
            }
            Ok(candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone()))
        }
    }

    impl CustomOp2 for HalfConv {
        fn name(&self) -> &'static str {
            "diffuse-cudnn-conv2d-half"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("diffuse-cudnn-conv2d-half runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &Layout,
            s2: &candle_core::CudaStorage,
            l2: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
            let y = match self.d {
                Data::F16 => self.run::<half::f16>(&g, (s1, l1), (s2, l2))?,
                Data::Bf16 => self.run::<half::bf16>(&g, (s1, l1), (s2, l2))?,
                Data::F32 => candle_core::bail!("diffuse-cudnn-conv2d-half: f32 input"),
            };
            Ok((y, Shape::from((g.n, g.co, g.oh, g.ow))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{choose, Allowed, Candidate, Math};

    fn c(ok: bool, deterministic: bool, math: Math) -> Candidate {
        Candidate {
            ok,
            deterministic,
            math,
        }
    }

    /// The choice skips what cannot run, is not reproducible (unless allowed), is not FMA-only
    /// in f32 (or may convert to f16 at all), needs more workspace than the cap (or whose size
    /// query fails), and keeps the heuristics' order otherwise.
    #[test]
    fn the_fastest_deterministic_algorithm_within_the_cap_is_chosen() {
        use Math::*;
        let list = [
            c(false, true, Fma),       // cannot run
            c(true, false, Fma),       // atomics: not reproducible
            c(true, true, Conversion), // may round f32 to f16
            c(true, true, TensorOp),   // TF32
            c(true, true, Default),    // TF32 allowed
            c(true, true, Fma),        // workspace over the cap
            c(true, true, Fma),        // size query refused
            c(true, true, Fma),        // the f32 choice
        ];
        let ws = [0, 0, 0, 10, 20, 2000, 0, 300];
        let size = |i: usize| (i != 6).then_some(ws[i]);
        let f32 = Allowed {
            tensor_cores: false,
            nondeterministic: false,
        };
        let tf32 = Allowed {
            tensor_cores: true,
            ..f32
        };
        assert_eq!(choose(&list, f32, 1000, size), Some((7, 300)));
        assert_eq!(choose(&list, tf32, 1000, size), Some((3, 10)));
        assert_eq!(
            choose(&list[4..], tf32, 1000, |i| size(i + 4)),
            Some((0, 20))
        );
        assert_eq!(choose(&list, f32, 100, size), None);
        assert_eq!(choose(&list[..3], tf32, 1000, size), None);
        assert_eq!(choose(&[], f32, 1000, size), None);
        // DIFFUSE_CUDNN_DETERMINISTIC=0: the atomics entry, the heuristics' second, is taken.
        let any = Allowed {
            nondeterministic: true,
            ..f32
        };
        assert_eq!(choose(&list, any, 1000, size), Some((1, 0)));
    }
}
