//! Exponential moving average of the weights, with diffusers' warm-up
//! (decay_t = min(decay, (1 + t) / (10 + t))), so early EMA weights are not dominated by init.
use crate::error::Result;
use candle_core::{Tensor, Var};

pub struct Ema {
    pub decay: f64,
    /// (name, shadow) sorted by name, matching the optimizer's order.
    pub shadow: Vec<(String, Tensor)>,
    pub updates: usize,
}

impl Ema {
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        let mut shadow: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        shadow.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            decay,
            shadow,
            updates: 0,
        })
    }

    pub fn current_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// shadow = d * shadow + (1 - d) * param, for vars sorted by name.
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        let d = self.current_decay();
        debug_assert!(self
            .shadow
            .iter()
            .zip(vars)
            .all(|((n, _), (vn, _))| n == vn));
        // On CUDA all tensors in a few launches, in place (the same float operations).
        let shadows: Vec<&Tensor> = self.shadow.iter().map(|(_, s)| s).collect();
        let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
        if !crate::kernels::ema::update_in_place(&shadows, &params, d)? {
            for ((_, s), (_, v)) in self.shadow.iter_mut().zip(vars) {
                // detach: a Var operand would chain every update into one autograd graph.
                *s = ((&*s * d)? + (v.as_tensor().detach() * (1.0 - d))?)?.detach();
            }
        }
        self.updates += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ema_warms_up_then_tracks() {
        let v = Var::from_slice(&[0.0f32], 1, &Device::Cpu).unwrap();
        let vars = vec![("a".to_string(), v.clone())];
        let mut e = Ema::new(&vars, 0.999).unwrap();
        assert!((e.current_decay() - 0.1).abs() < 1e-12);
        v.set(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap())
            .unwrap();
        e.update(&vars).unwrap();
        let s: Vec<f32> = e.shadow[0].1.to_vec1().unwrap();
        assert!((s[0] - 0.9).abs() < 1e-6);
        e.updates = 1_000_000;
        assert_eq!(e.current_decay(), 0.999);
    }
}
