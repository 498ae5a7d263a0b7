//! AdamW with inspectable state (candle-nn's keeps its moments private, and resume needs them),
//! the learning-rate schedule, and global-norm gradient clipping done on the device.
use crate::error::Result;
use crate::kernels::adamw::{self, AdamWScalars};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Learning-rate schedule after linear warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    Constant,
    Cosine,
}

/// Linear warm-up from 0 to `lr` over `warmup` steps, then constant or cosine decay to 0 at
/// `total` steps (as diffusers' get_cosine_schedule_with_warmup).
pub fn lr_at(step: usize, lr: f64, warmup: usize, total: usize, kind: LrSchedule) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    match kind {
        LrSchedule::Constant => lr,
        LrSchedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let p = ((step - warmup) as f64 / span).min(1.0);
            lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// diffusers' train_unconditional defaults: betas (0.95, 0.999), eps 1e-8, wd 1e-6.
    fn default() -> Self {
        Self {
            beta1: 0.95,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-6,
        }
    }
}

/// One parameter with its moments.
pub struct Slot {
    pub name: String,
    pub var: Var,
    pub m: Tensor,
    pub v: Tensor,
    /// [m | v] flattened, which `m` and `v` are views of after a fused CPU step.
    mv: Option<Tensor>,
}

impl Slot {
    /// The update as Candle ops (any device; the reference for the fused CPU pass).
    fn composite_update(
        &mut self,
        g: &Tensor,
        p: AdamWParams,
        (bc1, bc2): (f64, f64),
        lr: f64,
        scale: Option<&Tensor>,
    ) -> Result<()> {
        let g = match scale {
            Some(f) => g.broadcast_mul(&f.to_dtype(g.dtype())?)?,
            None => g.clone(),
        };
        // detach: the moments must not carry an autograd graph from step to step (that
        // chain keeps every step's tensors alive: +100 MB per step on a tiny model).
        let g = g.detach();
        self.m = ((&self.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?.detach();
        self.v = ((&self.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?.detach();
        self.mv = None;
        let m_hat = (&self.m / bc1)?;
        let v_hat = (&self.v / bc2)?;
        let theta = self.var.as_tensor().detach();
        let decayed = (&theta * (1.0 - lr * p.weight_decay))?;
        let upd = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
        self.var.set(&(decayed - (upd * lr)?)?)?;
        Ok(())
    }
}

pub struct AdamW {
    pub params: AdamWParams,
    pub slots: Vec<Slot>,
    /// Number of updates applied (for bias correction).
    pub t: usize,
}

impl AdamW {
    /// `vars` sorted by name, so the order (and thus the saved state) is deterministic.
    pub fn new(mut vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot {
                    name,
                    var,
                    m,
                    v,
                    mv: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            slots,
            t: 0,
        })
    }

    /// Scale factor that clips the global gradient norm to `max_norm`, as a device scalar
    /// (no host round-trip). Returns None when clipping is off.
    pub fn clip_factor(&self, grads: &GradStore, max_norm: Option<f64>) -> Result<Option<Tensor>> {
        let Some(max_norm) = max_norm else {
            return Ok(None);
        };
        let gs: Vec<&Tensor> = self
            .slots
            .iter()
            .filter_map(|s| grads.get(s.var.as_tensor()))
            .collect();
        // On CUDA a few launches for all the gradients; elsewhere Candle's ops, in this order.
        let Some(total) = crate::kernels::sum_squares(&gs)? else {
            return Ok(None);
        };
        let norm = total.sqrt()?;
        // min(1, max_norm / (norm + 1e-6)), like torch.nn.utils.clip_grad_norm_.
        let f = ((norm + 1e-6)?.recip()? * max_norm)?.clamp(0f64, 1f64)?;
        Ok(Some(f))
    }

    /// One AdamW update at learning rate `lr`, with gradients optionally scaled by `scale`.
    pub fn step(&mut self, grads: &GradStore, lr: f64, scale: Option<&Tensor>) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        // The clipping factor as a host float for the fused CPU update: on CPU, reading it is
        // no device round trip.
        let host_scale = match scale {
            Some(f) if f.device().is_cpu() => {
                Some(f.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0])
            }
            _ => None,
        };
        // The fused update's slots and their [m | v], updated together below.
        let mut fused: Vec<(usize, Tensor)> = Vec::new();
        // The model's parameters live on one device.
        let on_cpu = self
            .slots
            .first()
            .is_some_and(|s| s.var.as_tensor().device().is_cpu());
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let theta = s.var.as_tensor();
            if !adamw::applies(theta, g, &s.m)
                || (on_cpu && scale.is_some() && host_scale.is_none())
            {
                s.composite_update(g, p, (bc1, bc2), lr, scale)?;
                continue;
            }
            let mv = match &s.mv {
                Some(mv) => mv.clone(),
                None => Tensor::cat(&[s.m.flatten_all()?, s.v.flatten_all()?], 0)?,
            };
            fused.push((i, mv));
        }
        if fused.is_empty() {
            return Ok(());
        }
        // In place: on the CPU one pass per tensor, bit-identical to the composite; on CUDA
        // (unless DIFFUSE_CUDA_KERNELS=0) all tensors in a few launches, the same operations,
        // the clipping scale read on the device.
        let h = AdamWScalars {
            beta1: p.beta1,
            beta2: p.beta2,
            bc1,
            bc2,
            eps: p.eps,
            lr,
            weight_decay: p.weight_decay,
            scale: host_scale,
        };
        let mvs = {
            let items: Vec<(&Tensor, &Tensor, &Tensor)> = fused
                .iter()
                .map(|(i, mv)| {
                    let theta = self.slots[*i].var.as_tensor();
                    let g = grads.get(theta).expect("a fused slot has a gradient");
                    (theta, g, mv)
                })
                .collect();
            adamw::step_many(&items, h, scale.filter(|_| !on_cpu))?
        };
        for ((i, _), mv) in fused.into_iter().zip(mvs) {
            let s = &mut self.slots[i];
            let theta = s.var.as_tensor();
            let n = theta.elem_count();
            s.m = mv.narrow(0, 0, n)?.reshape(theta.shape())?;
            s.v = mv.narrow(0, n, n)?.reshape(theta.shape())?;
            s.mv = Some(mv);
        }
        Ok(())
    }

    /// Moments as named tensors for the training state.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("adam_m.{}", s.name), s.m.clone()),
                    (format!("adam_v.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restore moments saved by `state_tensors`.
    pub fn load_state(&mut self, get: impl Fn(&str) -> Option<Tensor>, t: usize) -> Result<()> {
        for s in self.slots.iter_mut() {
            let (mk, vk) = (format!("adam_m.{}", s.name), format!("adam_v.{}", s.name));
            let (Some(m), Some(v)) = (get(&mk), get(&vk)) else {
                return Err(crate::Error::Model(format!(
                    "training state has no optimizer moments for '{}'",
                    s.name
                )));
            };
            if m.dims() != s.var.dims() || v.dims() != s.var.dims() {
                return Err(crate::Error::Model(format!(
                    "training state moments for '{}' have shape {:?}, the model has {:?}",
                    s.name,
                    m.dims(),
                    s.var.dims()
                )));
            }
            let dev = s.var.device();
            s.m = m.to_dtype(DType::F32)?.to_device(dev)?;
            s.v = v.to_dtype(DType::F32)?.to_device(dev)?;
            s.mv = None;
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused CPU step against the composite Candle ops, bit for bit, over several steps,
    /// with and without a clipping scale, on odd sizes (not multiples of the chunk or lanes).
    #[test]
    fn fused_step_equals_composite_ops() {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 3] = [&[7, 3, 3, 3], &[33], &[40_009]];
        let params = AdamWParams {
            weight_decay: 0.01,
            ..Default::default()
        };
        for clip in [None, Some(0.37f32)] {
            let mk = || {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(i, sh)| {
                        let n: usize = sh.iter().product();
                        let v: Vec<f32> = (0..n)
                            .map(|k| ((k * 7 + i) % 23) as f32 * 0.1 - 1.1)
                            .collect();
                        (format!("p{i}"), Var::from_vec(v, *sh, &dev).unwrap())
                    })
                    .collect::<Vec<_>>()
            };
            let (va, vb) = (mk(), mk());
            let mut fused = AdamW::new(va.clone(), params).unwrap();
            let mut reference = AdamW::new(vb.clone(), params).unwrap();
            let scale = clip.map(|c| Tensor::new(c, &dev).unwrap());
            for step in 0..3 {
                let loss = |vs: &[(String, Var)]| {
                    let mut l = Tensor::new(0f32, &dev).unwrap();
                    for (_, v) in vs {
                        let t = v.as_tensor();
                        let q = ((t * t).unwrap() * (1.0 + step as f64)).unwrap();
                        l = (l + (q + t.sin().unwrap()).unwrap().sum_all().unwrap()).unwrap();
                    }
                    l.backward().unwrap()
                };
                fused.step(&loss(&va), 1e-2, scale.as_ref()).unwrap();
                let gb = loss(&vb);
                reference.t += 1;
                let (bc1, bc2) = (
                    1.0 - params.beta1.powi(reference.t as i32),
                    1.0 - params.beta2.powi(reference.t as i32),
                );
                for s in reference.slots.iter_mut() {
                    let g = gb.get(s.var.as_tensor()).unwrap().clone();
                    s.composite_update(&g, params, (bc1, bc2), 1e-2, scale.as_ref())
                        .unwrap();
                }
                for (a, b) in fused.slots.iter().zip(&reference.slots) {
                    for (x, y) in [
                        (a.var.as_tensor(), b.var.as_tensor()),
                        (&a.m, &b.m),
                        (&a.v, &b.v),
                    ] {
                        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                        assert_eq!(x, y, "{} differs at step {step}", a.name);
                    }
                }
            }
        }
    }

    #[test]
    fn warmup_then_cosine() {
        assert!((lr_at(0, 1.0, 10, 110, LrSchedule::Cosine) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(10, 1.0, 10, 110, LrSchedule::Cosine), 1.0);
        assert!((lr_at(60, 1.0, 10, 110, LrSchedule::Cosine) - 0.5).abs() < 1e-12);
        assert!(lr_at(110, 1.0, 10, 110, LrSchedule::Cosine).abs() < 1e-12);
        assert_eq!(lr_at(60, 1.0, 10, 110, LrSchedule::Constant), 1.0);
    }

    /// Against a hand computation of torch.optim.AdamW's first two steps.
    #[test]
    fn adamw_matches_reference_update() {
        let dev = Device::Cpu;
        let w = Var::from_slice(&[1.0f32, -2.0], 2, &dev).unwrap();
        let params = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], params).unwrap();
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for step in 1..=2 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 0.1, None).unwrap();
            for i in 0..2 {
                let g = 2.0 * expect[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(step));
                let vh = v[i] / (1.0 - 0.999f64.powi(step));
                expect[i] = expect[i] * (1.0 - 0.1 * 0.01) - 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expect[i]).abs() < 1e-6,
                "{got:?} {expect:?}"
            );
        }
    }

    #[test]
    fn clip_factor_scales_to_max_norm() {
        let dev = Device::Cpu;
        let w = Var::from_slice(&[3.0f32, 4.0], 2, &dev).unwrap();
        let opt = AdamW::new(vec![("w".into(), w.clone())], AdamWParams::default()).unwrap();
        // grad = w (loss = 0.5 |w|^2), norm 5.
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let grads = loss.backward().unwrap();
        let f = opt.clip_factor(&grads, Some(1.0)).unwrap().unwrap();
        let f: f32 = f.to_scalar().unwrap();
        assert!((f - 0.2).abs() < 1e-6);
        let f = opt.clip_factor(&grads, Some(10.0)).unwrap().unwrap();
        assert_eq!(f.to_scalar::<f32>().unwrap(), 1.0);
    }
}
