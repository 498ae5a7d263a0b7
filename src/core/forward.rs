//! The forward (noising) process: closed-form q(x_t | x_0), velocity, the inverse maps that
//! training and sampling need, and the step-by-step Markov chain for checking the closed form.
//!
//! On CPU, q_sample is one fused pass (a Candle custom op; with noise drawn inside the same
//! pass when none is given). Candle's composite (gather, two broadcast multiplies, add) was
//! measured 8x slower than PyTorch and 30x off a plain copy, purely per-op overhead; the fused
//! pass runs at copy speed (see README, `make bench`). Other devices use the plain tensor
//! expression.
use crate::core::rng::{self, NoiseRng, CHUNK};
use crate::core::schedule::Schedule;
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Per-sample coefficient pair for `a * x + b * y`, both broadcast over C,H,W.
struct Axpby {
    a: Vec<f32>,
    b: Vec<f32>,
}

#[derive(Clone, Copy)]
enum Coef {
    SqrtAb,
    Sqrt1m,
}

/// Elements handled per parallel task in the fused kernels.
const PAR_CHUNK: usize = CHUNK;

/// Call `f(sample, range)` for each run of elements of `[start, start+len)` that belong to one
/// sample of `per` elements: keeps integer division out of the per-element loop.
fn for_each_sample_run(
    start: usize,
    len: usize,
    per: usize,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let mut i = 0;
    while i < len {
        let s = (start + i) / per;
        let end = ((s + 1) * per - start).min(len);
        f(s, i..end);
        i = end;
    }
}

fn axpby_into(out: &mut [f32], x: &[f32], y: &[f32], a: &[f32], b: &[f32], per: usize) {
    out.par_chunks_mut(PAR_CHUNK)
        .enumerate()
        .for_each(|(c, o)| {
            let start = c * PAR_CHUNK;
            let (x, y) = (&x[start..start + o.len()], &y[start..start + o.len()]);
            for_each_sample_run(start, o.len(), per, |s, r| {
                let (ca, cb) = (a[s], b[s]);
                for ((ov, xv), yv) in o[r.clone()].iter_mut().zip(&x[r.clone()]).zip(&y[r]) {
                    *ov = ca * xv + cb * yv;
                }
            });
        });
}

impl CustomOp2 for Axpby {
    fn name(&self) -> &'static str {
        "diffuse-axpby"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, y] = crate::kernels::f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "diffuse-axpby: shape mismatch {:?} {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let n = x.len();
        let per = n / self.a.len();
        let mut out = vec![0f32; n];
        axpby_into(&mut out, x, y, &self.a, &self.b, per);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The closed form x_t = a x0 + s eps with given coefficients (a = sqrt(abar_t),
/// s = sqrt(1 - abar_t), or a sampler's own level for the same t): what samplers use to
/// start img2img (SDEdit) from a clean image.
pub fn closed_form(x0: &Tensor, eps: &Tensor, a: f64, s: f64) -> Result<Tensor> {
    if x0.dims() != eps.dims() {
        return Err(Error::invalid(format!(
            "image {:?} and noise {:?} differ in shape",
            x0.dims(),
            eps.dims()
        )));
    }
    Ok((x0.affine(a, 0.0)? + eps.affine(s, 0.0)?)?)
}

/// The forward process for one schedule, with its coefficient tables on `device` in f32.
pub struct ForwardProcess {
    pub schedule: Schedule,
    device: Device,
    sqrt_ab_host: Vec<f32>,
    sqrt_1m_host: Vec<f32>,
    sqrt_ab: Tensor,
    sqrt_1m: Tensor,
}

impl ForwardProcess {
    pub fn new(schedule: Schedule, device: &Device) -> Result<Self> {
        let sqrt_ab: Vec<f32> = schedule.rows().map(|r| r.sqrt_alpha_bar as f32).collect();
        let sqrt_1m: Vec<f32> = schedule
            .rows()
            .map(|r| r.sqrt_one_minus_alpha_bar as f32)
            .collect();
        Self::from_tables(schedule, sqrt_ab, sqrt_1m, device)
    }

    /// Use explicit f32 coefficient tables, e.g. diffusers' own float32 ones (it forms
    /// `1 - alpha_bar` in f32, which near t = 0 loses ~1e-4 relative to the f64 value we use).
    pub fn from_tables(
        schedule: Schedule,
        sqrt_ab_host: Vec<f32>,
        sqrt_1m_host: Vec<f32>,
        device: &Device,
    ) -> Result<Self> {
        let n = schedule.len();
        if sqrt_ab_host.len() != n || sqrt_1m_host.len() != n {
            return Err(Error::invalid(format!(
                "coefficient tables need {n} entries, got {} and {}",
                sqrt_ab_host.len(),
                sqrt_1m_host.len()
            )));
        }
        Ok(Self {
            sqrt_ab: Tensor::from_slice(&sqrt_ab_host, n, device)?,
            sqrt_1m: Tensor::from_slice(&sqrt_1m_host, n, device)?,
            sqrt_ab_host,
            sqrt_1m_host,
            schedule,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Check a host timestep list against [0, T-1].
    pub fn check_timesteps(&self, t: &[u32]) -> Result<()> {
        for &ti in t {
            self.schedule.check_t(ti as usize)?;
        }
        Ok(())
    }

    /// Timesteps as a u32 tensor on this process's device.
    pub fn timesteps_tensor(&self, t: &[u32]) -> Result<Tensor> {
        self.check_timesteps(t)?;
        Ok(Tensor::from_slice(t, t.len(), &self.device)?)
    }

    fn batch_of(x: &Tensor, t: &Tensor) -> Result<usize> {
        let b = x.dim(0)?;
        if t.dims() != [b] {
            return Err(Error::invalid(format!(
                "timesteps have shape {:?}, expected [{b}] (one per sample)",
                t.dims()
            )));
        }
        Ok(b)
    }

    /// Gather a coefficient table at t and shape it [B,1,..] to broadcast against `like`.
    fn gather(&self, table: &Tensor, t: &Tensor, like: &Tensor) -> Result<Tensor> {
        let b = Self::batch_of(like, t)?;
        let mut shape = vec![1usize; like.rank()];
        shape[0] = b;
        Ok(table
            .index_select(&t.to_dtype(DType::U32)?, 0)?
            .reshape(shape)?)
    }

    /// sqrt(abar_t) as [B,1,1,1].
    pub fn sqrt_alpha_bar(&self, t: &Tensor, like: &Tensor) -> Result<Tensor> {
        self.gather(&self.sqrt_ab, t, like)
    }

    /// sqrt(1 - abar_t) as [B,1,1,1].
    pub fn sqrt_one_minus_alpha_bar(&self, t: &Tensor, like: &Tensor) -> Result<Tensor> {
        self.gather(&self.sqrt_1m, t, like)
    }

    fn host_coefs(&self, t: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let t: Vec<u32> = t.to_dtype(DType::U32)?.to_vec1()?;
        self.check_timesteps(&t)?;
        Ok((
            t.iter().map(|&i| self.sqrt_ab_host[i as usize]).collect(),
            t.iter().map(|&i| self.sqrt_1m_host[i as usize]).collect(),
        ))
    }

    /// `a_t * x + sign * b_t * y` with per-sample coefficients taken from the tables `a`, `b`:
    /// one fused pass on CPU, the composite tensor expression elsewhere.
    fn combine(
        &self,
        x: &Tensor,
        y: &Tensor,
        t: &Tensor,
        a: Coef,
        b: Coef,
        sign: f32,
    ) -> Result<Tensor> {
        Self::batch_of(x, t)?;
        if x.shape() != y.shape() {
            return Err(Error::invalid(format!(
                "shape mismatch: {:?} vs {:?}",
                x.dims(),
                y.dims()
            )));
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 && y.dtype() == DType::F32 {
            let (ab, b1m) = self.host_coefs(t)?;
            let pick = |c: Coef| match c {
                Coef::SqrtAb => ab.clone(),
                Coef::Sqrt1m => b1m.clone(),
            };
            let op = Axpby {
                a: pick(a),
                b: pick(b).into_iter().map(|v| sign * v).collect(),
            };
            return Ok(x.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &op)?);
        }
        let table = |c: Coef| match c {
            Coef::SqrtAb => &self.sqrt_ab,
            Coef::Sqrt1m => &self.sqrt_1m,
        };
        let ca = self.gather(table(a), t, x)?.to_dtype(x.dtype())?;
        let cb = (self.gather(table(b), t, x)? * sign as f64)?.to_dtype(x.dtype())?;
        Ok((x.broadcast_mul(&ca)? + y.broadcast_mul(&cb)?)?)
    }

    /// x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, per-sample t.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, eps: &Tensor) -> Result<Tensor> {
        self.combine(x0, eps, t, Coef::SqrtAb, Coef::Sqrt1m, 1.0)
    }

    /// Draw eps ~ N(0, I) from `rng` and return (x_t, eps). On CPU the noise is generated
    /// inside the same pass that forms x_t, chunk by chunk while it is in cache.
    pub fn q_sample_noise(
        &self,
        x0: &Tensor,
        t: &Tensor,
        rng: &mut NoiseRng,
    ) -> Result<(Tensor, Tensor)> {
        if x0.device().is_cpu() && x0.dtype() == DType::F32 {
            Self::batch_of(x0, t)?;
            let (a, b) = self.host_coefs(t)?;
            let x0c = x0.contiguous()?;
            let (storage, layout) = x0c.storage_and_layout();
            let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((lo, hi))) =
                (&*storage, layout.contiguous_offsets())
            else {
                return Err(Error::Runtime(
                    "q_sample_noise: expected contiguous f32 CPU storage".into(),
                ));
            };
            // Read x0 in place: copying it out first cost a third of the pass.
            let x = &data[lo..hi];
            let n = x.len();
            let per = n / a.len().max(1);
            let mut eps = vec![0f32; n];
            let mut out = vec![0f32; n];
            let draw = rng.draws;
            rng.draws += 1;
            let seed = rng.seed;
            out.par_chunks_mut(CHUNK)
                .zip(eps.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, (o, e))| {
                    let start = c * CHUNK;
                    rng::fill_normal_chunk(seed, draw, c as u64, e);
                    let x = &x[start..start + o.len()];
                    for_each_sample_run(start, o.len(), per, |s, r| {
                        let (ca, cb) = (a[s], b[s]);
                        for ((ov, xv), ev) in o[r.clone()].iter_mut().zip(&x[r.clone()]).zip(&e[r])
                        {
                            *ov = ca * xv + cb * ev;
                        }
                    });
                });
            let shape = x0.shape().clone();
            return Ok((
                Tensor::from_vec(out, shape.clone(), &Device::Cpu)?,
                Tensor::from_vec(eps, shape, &Device::Cpu)?,
            ));
        }
        let eps = rng
            .randn(x0.shape().clone(), x0.device())?
            .to_dtype(x0.dtype())?;
        let xt = self.q_sample(x0, t, &eps)?;
        Ok((xt, eps))
    }

    /// The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.
    pub fn velocity(&self, x0: &Tensor, t: &Tensor, eps: &Tensor) -> Result<Tensor> {
        self.combine(eps, x0, t, Coef::SqrtAb, Coef::Sqrt1m, -1.0)
    }

    /// x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
    pub fn x0_from_eps(&self, x_t: &Tensor, t: &Tensor, eps: &Tensor) -> Result<Tensor> {
        let a = self.sqrt_alpha_bar(t, x_t)?;
        let b = self.sqrt_one_minus_alpha_bar(t, x_t)?;
        Ok((x_t - eps.broadcast_mul(&b)?)?.broadcast_div(&a)?)
    }

    /// eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).
    pub fn eps_from_x0(&self, x_t: &Tensor, t: &Tensor, x0: &Tensor) -> Result<Tensor> {
        let a = self.sqrt_alpha_bar(t, x_t)?;
        let b = self.sqrt_one_minus_alpha_bar(t, x_t)?;
        Ok((x_t - x0.broadcast_mul(&a)?)?.broadcast_div(&b)?)
    }

    /// x0 = sqrt(abar) x_t - sqrt(1 - abar) v.
    pub fn x0_from_v(&self, x_t: &Tensor, t: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.combine(x_t, v, t, Coef::SqrtAb, Coef::Sqrt1m, -1.0)
    }

    /// eps = sqrt(1 - abar) x_t + sqrt(abar) v.
    pub fn eps_from_v(&self, x_t: &Tensor, t: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.combine(x_t, v, t, Coef::Sqrt1m, Coef::SqrtAb, 1.0)
    }

    /// The Markov chain x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) eps_s for s = 0..=t,
    /// i.e. t+1 single steps from the data, ending at the same marginal as q_sample at t.
    pub fn markov_chain(&self, x0: &Tensor, t: usize, rng: &mut NoiseRng) -> Result<Tensor> {
        self.schedule.check_t(t)?;
        let mut x = x0.clone();
        for s in 0..=t {
            let eps = rng
                .randn(x.shape().clone(), x.device())?
                .to_dtype(x.dtype())?;
            x = markov_step(&x, self.schedule.betas[s], &eps)?;
        }
        Ok(x)
    }
}

/// One step of the forward Markov chain, q(x_s | x_{s-1}): x_s = sqrt(1 - beta_s) x_{s-1} +
/// sqrt(beta_s) eps. RePaint's "undo" moves are these single steps.
pub fn markov_step(x: &Tensor, beta: f64, eps: &Tensor) -> Result<Tensor> {
    if x.dims() != eps.dims() {
        return Err(Error::invalid(format!(
            "sample {:?} and noise {:?} differ in shape",
            x.dims(),
            eps.dims()
        )));
    }
    Ok((x.affine((1.0 - beta).sqrt(), 0.0)? + eps.affine(beta.sqrt(), 0.0)?)?)
}
