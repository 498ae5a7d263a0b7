//! conv2d on CUDA through cuDNN, in builds with `FEATURES=cudnn`: the forward and both
//! gradients as cuDNN's own convolutions (implicit GEMMs that write no im2col columns: the
//! kernels PyTorch's convolutions run), in place of our im2col + cuBLAS path
//! (src/kernels/cuda_conv.rs), which stays the path of the default CUDA build, of shapes cuDNN
//! is not given, and of `DIFFUSE_CUDNN=0`.
//!
//! Candle's cuDNN conv2d sets everything up on every call (descriptors, the algorithm
//! heuristic, a zeroed workspace) and has no backward of its own (its gradients ran as more
//! forward convolutions of odd shapes): on an H200 it left the GPU 89% idle in our cifar10 train
//! step (README "GPU (CUDA)"). Here each shape's descriptors and algorithms are chosen once and
//! kept (per thread: a cuDNN handle is not thread-safe), the workspace is one buffer per device
//! that only grows, and the algorithm is the heuristics' fastest deterministic one whose
//! workspace is at most 1 GiB, so a seed reproduces a run on the same device. Math: FMA only
//! (exact f32, what diffusers gets with TF32 off) unless Candle's TF32 switch is on
//! (`DIFFUSE_TF32=1`), when cuDNN's default math may use TF32 tensor cores, as PyTorch's
//! convolutions do by default.
#![cfg_attr(not(feature = "cudnn"), allow(dead_code))]

/// The largest workspace an algorithm may ask for (bytes); the column budget's size.
const WORKSPACE_CAP: usize = 1 << 30;

/// One entry of cuDNN's heuristic list (fastest first), as the choice reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    /// cuDNN can run it for these descriptors.
    ok: bool,
    /// Bitwise reproducible (no atomics in its sums).
    deterministic: bool,
    /// Tensor-core math (TF32 for f32 data).
    tensor_op: bool,
}

impl Candidate {
    /// Whether the choice may take it: it runs, it is deterministic, and TF32 only when asked.
    fn usable(&self, tf32: bool) -> bool {
        self.ok && self.deterministic && (tf32 || !self.tensor_op)
    }
}

/// The first usable candidate (in the heuristics' order) whose workspace, as `workspace` gives
/// it (None: cuDNN refused the query), is within `cap`.
fn choose(
    list: &[Candidate],
    tf32: bool,
    cap: usize,
    mut workspace: impl FnMut(usize) -> Option<usize>,
) -> Option<(usize, usize)> {
    list.iter()
        .enumerate()
        .filter(|(_, c)| c.usable(tf32))
        .find_map(|(i, _)| workspace(i).filter(|&w| w <= cap).map(|w| (i, w)))
}

#[cfg(feature = "cudnn")]
pub(crate) use device::{bwd_input, bwd_weight, fwd};

/// cuDNN convolution calls so far in this process (each pass counts one): what the device test
/// reads to show that a cuDNN build's convolutions are cuDNN's.
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn calls() -> usize {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(feature = "cudnn")]
mod device {
    use super::super::conv::Geom;
    use super::{choose, Candidate, WORKSPACE_CAP};
    use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::ffi::c_void;
    use std::sync::OnceLock;

    type Res<T> = Result<T, result::CudnnError>;

    /// Whether this process uses cuDNN: not with `DIFFUSE_CUDNN=0`, nor where the library does
    /// not load (one warning; our im2col path then runs).
    fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            if std::env::var("DIFFUSE_CUDNN").is_ok_and(|v| v == "0") {
                return false;
            }
            // SAFETY: only tries to open the library (dlopen).
            let found = unsafe { sys::is_culib_present() };
            if !found {
                tracing::warn!(
                    "cuDNN (libcudnn) not found: convolutions run on diffuse's own CUDA path"
                );
            }
            found
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

    fn tensor(dims: [usize; 4]) -> Res<Tensor4> {
        let t = Tensor4(result::create_tensor_descriptor()?);
        // SAFETY: a live descriptor; the dims fit i32 (`fits_cudnn`).
        unsafe {
            result::set_tensor4d_descriptor(
                t.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims.map(|d| d as i32),
            )
        }?;
        Ok(t)
    }

    /// A convolution descriptor for `g` (f32 accumulation, cross-correlation as conv2d).
    fn conv(g: &Geom) -> Res<Conv> {
        let c = Conv(result::create_convolution_descriptor()?);
        let (p, s) = (g.pad as i32, g.stride as i32);
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
            )
        }?;
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
            tensor_op: matches!(
                math,
                M::CUDNN_TENSOR_OP_MATH | M::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
            ),
        }
    }

    /// The math a candidate runs with: FMA only (exact f32) unless TF32 is on, then its own.
    fn math(tf32: bool, own: sys::cudnnMathType_t) -> sys::cudnnMathType_t {
        match tf32 {
            true => own,
            false => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        }
    }

    /// One pass's choice: its descriptor (math type set), algorithm and workspace bytes.
    struct Chosen<A> {
        conv: Conv,
        algo: A,
        workspace: usize,
    }

    /// A shape's descriptors and each pass's choice (None: cuDNN offered nothing usable, and
    /// that pass runs on our path).
    struct Plan {
        x: Tensor4,
        w: Filter4,
        y: Tensor4,
        fwd: Option<Chosen<sys::cudnnConvolutionFwdAlgo_t>>,
        data: Option<Chosen<sys::cudnnConvolutionBwdDataAlgo_t>>,
        filter: Option<Chosen<sys::cudnnConvolutionBwdFilterAlgo_t>>,
    }

    /// Runs cuDNN's heuristic (`list` fills up to 8 entries and says how many) and keeps the
    /// choice; `size` asks the workspace of an algorithm under the descriptor's current math.
    fn pick<A: Copy, P>(
        g: &Geom,
        tf32: bool,
        list: impl FnOnce(&Conv, &mut [P; 8]) -> Res<usize>,
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
        let c = conv(g)?;
        // SAFETY: a plain C struct of enums and numbers, all-zero valid; cuDNN fills it.
        let mut perf: [P; 8] = unsafe { std::mem::zeroed() };
        let n = list(&c, &mut perf)?.min(8);
        let entries: Vec<_> = perf[..n].iter().map(&read).collect();
        let cands: Vec<_> = entries.iter().map(|e| candidate(e.1, e.2, e.3)).collect();
        let found = choose(&cands, tf32, WORKSPACE_CAP, |i| {
            // SAFETY: a live descriptor.
            unsafe { result::set_convolution_math_type(c.0, math(tf32, entries[i].3)) }.ok()?;
            size(&c, entries[i].0).ok()
        });
        let Some((i, workspace)) = found else {
            return Ok(None);
        };
        // SAFETY: a live descriptor; the winner's math, which its workspace was sized for.
        unsafe { result::set_convolution_math_type(c.0, math(tf32, entries[i].3)) }?;
        Ok(Some(Chosen {
            conv: c,
            algo: entries[i].0,
            workspace,
        }))
    }

    impl Plan {
        fn new(h: sys::cudnnHandle_t, g: &Geom, tf32: bool) -> Res<Self> {
            let x = tensor([g.n, g.ci, g.h, g.w])?;
            let y = tensor([g.n, g.co, g.oh, g.ow])?;
            let w = Filter4(result::create_filter_descriptor()?);
            // SAFETY: a live descriptor; the dims fit i32.
            unsafe {
                result::set_filter4d_descriptor(
                    w.0,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    [g.co, g.ci, g.kh, g.kw].map(|d| d as i32),
                )
            }?;
            let mut count = 0;
            // SAFETY (the three heuristics and workspace queries): live handle and
            // descriptors, `perf` holds the 8 entries requested.
            let fwd = pick(
                g,
                tf32,
                |c, perf| unsafe {
                    result::get_convolution_forward_algorithm(
                        h,
                        x.0,
                        w.0,
                        c.0,
                        y.0,
                        8,
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
            let data = pick(
                g,
                tf32,
                |c, perf| unsafe {
                    result::get_convolution_backward_data_algorithm(
                        h,
                        w.0,
                        y.0,
                        c.0,
                        x.0,
                        8,
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
                |c, perf| unsafe {
                    result::get_convolution_backward_filter_algorithm(
                        h,
                        x.0,
                        y.0,
                        c.0,
                        w.0,
                        8,
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
            })
        }
    }

    /// A shape as the plans are keyed: the geometry and the math.
    type Key = ([usize; 9], bool);

    /// One device's cuDNN state on this thread. Fields drop in order: plans, then the
    /// workspace, then the handle.
    struct State {
        plans: HashMap<Key, Plan>,
        workspace: Option<CudaSlice<u8>>,
        handle: Handle,
    }

    thread_local! {
        /// None for a device where cuDNN could not start (warned once; our path runs).
        static STATE: RefCell<HashMap<DeviceId, Option<State>>> = RefCell::new(HashMap::new());
    }

    fn start(dev: &CudaDevice) -> Res<State> {
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|_| result::CudnnError(sys::cudnnStatus_t::CUDNN_STATUS_NOT_INITIALIZED))?;
        let handle = Handle(result::create_handle()?);
        // SAFETY: a live handle and Candle's stream, which outlives the device's use here.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }?;
        Ok(State {
            plans: HashMap::new(),
            workspace: None,
            handle,
        })
    }

    /// Whether cuDNN takes `g`: every tensor's elements within i32, which cuDNN's 4-d
    /// descriptors index, and nothing empty.
    fn fits_cudnn(g: &Geom) -> bool {
        let lim = i32::MAX as usize;
        g.n > 0
            && g.ci > 0
            && g.co > 0
            && g.n * g.ci * g.h * g.w <= lim
            && g.n * g.co * g.oh * g.ow <= lim
            && g.co * g.ci * g.kh * g.kw <= lim
    }

    /// The pass's raw pointers and workspace, for `run` to launch.
    struct Ready<'a, A> {
        h: sys::cudnnHandle_t,
        plan: &'a Plan,
        chosen: &'a Chosen<A>,
        ws: (*mut c_void, usize),
    }

    /// Finds (or makes) the plan of `g` on `dev`, makes the workspace big enough for the pass
    /// `which` selects, and hands them to `f`; Ok(None) where cuDNN is off, unavailable or
    /// has no usable algorithm for the pass (the caller then runs our path).
    fn with_plan<A, T>(
        dev: &CudaDevice,
        g: &Geom,
        which: impl Fn(&Plan) -> Option<&Chosen<A>>,
        f: impl FnOnce(Ready<'_, A>) -> candle_core::Result<T>,
    ) -> candle_core::Result<Option<T>> {
        if !enabled() || !fits_cudnn(g) {
            return Ok(None);
        }
        let tf32 = candle_core::cuda::gemm_reduced_precision_f32();
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
            );
            let plan = match state.plans.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let plan = Plan::new(h, g, tf32).map_err(|e| {
                        candle_core::Error::Msg(format!("cuDNN setup of conv2d {g:?}: {e:?}"))
                    })?;
                    e.insert(plan)
                }
            };
            let Some(chosen) = which(plan) else {
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
            let out = f(Ready {
                h,
                plan,
                chosen,
                ws,
            })?;
            super::CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Some(out))
        })
    }

    /// y = conv2d(x, w) into `y` ([n, co, oh, ow]): onto what `y` holds (the bias) when
    /// `accumulate`, else over it. Ok(false) where cuDNN does not take it.
    pub(crate) fn fwd(
        dev: &CudaDevice,
        g: &Geom,
        x: &CudaView<f32>,
        w: &CudaView<f32>,
        y: &mut CudaSlice<f32>,
        accumulate: bool,
    ) -> candle_core::Result<bool> {
        let ran = with_plan(
            dev,
            g,
            |p| p.fwd.as_ref(),
            |r| {
                let (alpha, beta) = (1f32, accumulate as u8 as f32);
                let s = dev.cuda_stream();
                // The guards record each buffer's use on the stream once the pass is queued.
                let ((px, _gx), (pw, _gw), (py, _gy)) =
                    (x.device_ptr(&s), w.device_ptr(&s), y.device_ptr_mut(&s));
                // SAFETY: every pointer is a live buffer on the handle's stream (Candle's), of the
                // descriptors' shapes (the callers' contiguous views); the workspace is as large as
                // the algorithm asked.
                unsafe {
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
                }
                .map_err(candle_core::Error::wrap)
            },
        )?;
        Ok(ran.is_some())
    }

    /// dx [n, ci, h, w] of conv2d(x, w) for the output gradient dy; None where cuDNN does not
    /// take it.
    pub(crate) fn bwd_input(
        dev: &CudaDevice,
        g: &Geom,
        dy: &CudaView<f32>,
        w: &CudaView<f32>,
    ) -> candle_core::Result<Option<CudaSlice<f32>>> {
        with_plan(
            dev,
            g,
            |p| p.data.as_ref(),
            |r| {
                // SAFETY: beta 0: cuDNN writes every element without reading it.
                let mut dx = unsafe { dev.alloc::<f32>(g.n * g.in_len())? };
                let (alpha, beta) = (1f32, 0f32);
                {
                    let s = dev.cuda_stream();
                    let ((pw, _gw), (pdy, _gdy), (pdx, _gdx)) =
                        (w.device_ptr(&s), dy.device_ptr(&s), dx.device_ptr_mut(&s));
                    // SAFETY: as in `fwd`.
                    unsafe {
                        result::convolution_backward_data(
                            r.h,
                            &alpha as *const f32 as *const c_void,
                            r.plan.w.0,
                            pw as *const c_void,
                            r.plan.y.0,
                            pdy as *const c_void,
                            r.chosen.conv.0,
                            r.chosen.algo,
                            r.ws.0,
                            r.ws.1,
                            &beta as *const f32 as *const c_void,
                            r.plan.x.0,
                            pdx as *mut c_void,
                        )
                    }
                    .map_err(candle_core::Error::wrap)?;
                }
                Ok(dx)
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
        with_plan(
            dev,
            g,
            |p| p.filter.as_ref(),
            |r| {
                // SAFETY: beta 0: cuDNN writes every element without reading it.
                let mut dw = unsafe { dev.alloc::<f32>(g.co * g.k())? };
                let (alpha, beta) = (1f32, 0f32);
                {
                    let s = dev.cuda_stream();
                    let ((px, _gx), (pdy, _gdy), (pdw, _gdw)) =
                        (x.device_ptr(&s), dy.device_ptr(&s), dw.device_ptr_mut(&s));
                    // SAFETY: as in `fwd`.
                    unsafe {
                        result::convolution_backward_filter(
                            r.h,
                            &alpha as *const f32 as *const c_void,
                            r.plan.x.0,
                            px as *const c_void,
                            r.plan.y.0,
                            pdy as *const c_void,
                            r.chosen.conv.0,
                            r.chosen.algo,
                            r.ws.0,
                            r.ws.1,
                            &beta as *const f32 as *const c_void,
                            r.plan.w.0,
                            pdw as *mut c_void,
                        )
                    }
                    .map_err(candle_core::Error::wrap)?;
                }
                Ok(dw)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{choose, Candidate};

    fn c(ok: bool, deterministic: bool, tensor_op: bool) -> Candidate {
        Candidate {
            ok,
            deterministic,
            tensor_op,
        }
    }

    /// The choice skips what cannot run, is not reproducible, uses TF32 unasked, or needs
    /// more workspace than the cap (or whose size query fails), and keeps the heuristics'
    /// order otherwise.
    #[test]
    fn the_fastest_deterministic_algorithm_within_the_cap_is_chosen() {
        let list = [
            c(false, true, false), // cannot run
            c(true, false, false), // atomics: not reproducible
            c(true, true, true),   // TF32
            c(true, true, false),  // workspace over the cap
            c(true, true, false),  // size query refused
            c(true, true, false),  // the f32 choice
        ];
        let ws = [0, 0, 10, 2000, 0, 300];
        let size = |i: usize| (i != 4).then_some(ws[i]);
        assert_eq!(choose(&list, false, 1000, size), Some((5, 300)));
        assert_eq!(choose(&list, true, 1000, size), Some((2, 10)));
        assert_eq!(choose(&list, false, 100, size), None);
        assert_eq!(choose(&list[..2], true, 1000, size), None);
        assert_eq!(choose(&[], false, 1000, size), None);
    }
}
