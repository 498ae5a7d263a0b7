//! UNet2DModel: conv_in, sinusoidal time embedding + MLP, down blocks, mid block, up blocks
//! with skip connections, GroupNorm/SiLU/conv_out — diffusers' forward pass step for step.
use super::blocks::{BlockOpts, Ctx, DownBlock, MidBlock, UpBlock};
use super::config::{BlockKind, UNetConfig};
use super::ops;
use crate::core::rng::NoiseRng;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Conv2d, Embedding, Linear, Module, VarBuilder};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// diffusers' TimestepEmbedding: linear_1, SiLU, linear_2.
#[derive(Debug)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

/// Named activations of one forward pass (keys as in the golden io.safetensors).
pub type Intermediates = BTreeMap<String, Tensor>;

#[derive(Debug)]
pub struct UNet2DModel {
    cfg: UNetConfig,
    conv_in: Conv2d,
    freqs: Tensor,
    time_embedding: TimestepEmbedding,
    /// diffusers' `class_embedding` (num_class_embeds rows of time_embed_dim), added to the
    /// time embedding: a class-conditional model.
    class_embedding: Option<Embedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: ops::GroupNorm,
    conv_out: Conv2d,
    dropout_rng: Mutex<NoiseRng>,
}

impl UNet2DModel {
    /// Build from `vb` (a VarMap-backed builder for training/loading); tensor paths are
    /// diffusers' state-dict keys.
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb = cfg.time_embed_dim();
        let o = BlockOpts {
            temb,
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            head_dim: cfg.attention_head_dim,
        };
        let conv_in = ops::conv2d_layer(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?;
        let te = vb.pp("time_embedding");
        let time_embedding = TimestepEmbedding {
            linear_1: candle_nn::linear(ch[0], temb, te.pp("linear_1"))?,
            linear_2: candle_nn::linear(temb, temb, te.pp("linear_2"))?,
        };
        let class_embedding = match cfg.num_class_embeds {
            Some(k) => Some(candle_nn::embedding(k, temb, vb.pp("class_embedding"))?),
            None => None,
        };
        let down_kinds = cfg.down_kinds()?;
        let mut down_blocks = Vec::with_capacity(n);
        let mut c_out = ch[0];
        for (i, kind) in down_kinds.iter().enumerate() {
            let c_in = c_out;
            c_out = ch[i];
            let last = i == n - 1;
            down_blocks.push(DownBlock::new(
                c_in,
                c_out,
                cfg.layers_per_block,
                *kind == BlockKind::Attn,
                (!last).then_some(cfg.downsample_padding),
                o,
                vb.pp("down_blocks").pp(i),
            )?);
        }
        let mid_block = match cfg.mid_block_type {
            Some(_) => Some(MidBlock::new(
                ch[n - 1],
                cfg.add_attention,
                cfg.mid_attn_groups(),
                cfg.mid_block_scale_factor,
                o,
                vb.pp("mid_block"),
            )?),
            None => None,
        };
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut c_out = rev[0];
        for (i, kind) in cfg.up_kinds()?.iter().enumerate() {
            let c_prev = c_out;
            c_out = rev[i];
            let c_in = rev[(i + 1).min(n - 1)];
            up_blocks.push(UpBlock::new(
                c_in,
                c_prev,
                c_out,
                cfg.layers_per_block + 1,
                *kind == BlockKind::Attn,
                i != n - 1,
                o,
                vb.pp("up_blocks").pp(i),
            )?);
        }
        let conv_norm_out = ops::GroupNorm::new(
            cfg.norm_num_groups,
            ch[0],
            cfg.norm_eps,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = ops::conv2d_layer(ch[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        let freqs = ops::timestep_freqs(ch[0], cfg.freq_shift, vb.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            freqs,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            dropout_rng: Mutex::new(NoiseRng::new(0)),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// The dtype the model computes in (its weights': f32, or bf16/f16 for half-precision
    /// inference); inputs and outputs stay f32.
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    /// Seed the generator used for dropout masks in training (dropout > 0 only).
    pub fn set_dropout_rng(&self, rng: NoiseRng) {
        *self.dropout_rng.lock().expect("dropout rng") = rng;
    }

    /// Predict from `x` [B, C, H, W] (f32) at `timesteps` [B] or a single timestep (u32, i64,
    /// f32, ...). `train` enables dropout and a softmax with a backward pass.
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, timesteps, None, train, None)
    }

    /// As `forward`, with class labels [B] (u32) for a class-conditional model
    /// (`num_class_embeds`): diffusers' `model(x, t, class_labels=...)`.
    pub fn forward_cond(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.run(x, timesteps, class_labels, train, None)
    }

    /// The number of class embeddings (classes plus any null class), if class-conditional.
    pub fn num_class_embeds(&self) -> Option<usize> {
        self.cfg.num_class_embeds
    }

    /// The class embedding of `labels` [B], checked against the model.
    fn class_emb(&self, labels: Option<&Tensor>, b: usize) -> Result<Option<Tensor>> {
        match (&self.class_embedding, labels) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(Error::invalid(
                "class labels given, but the model is not class-conditional (no num_class_embeds)",
            )),
            (Some(_), None) => Err(Error::invalid(format!(
                "the model is class-conditional (num_class_embeds = {}): class labels are required",
                self.cfg.num_class_embeds.unwrap_or(0)
            ))),
            (Some(e), Some(l)) => {
                let l = l.flatten_all()?.to_dtype(DType::U32)?;
                if l.elem_count() != b {
                    return Err(Error::invalid(format!(
                        "{} class labels for a batch of {b}",
                        l.elem_count()
                    )));
                }
                // Checked here on the CPU only, where reading the labels is free; on a GPU it
                // would stall every forward pass. Labels reaching a GPU model come from
                // classes.json (`Classes::resolve`) or a dataset's K classes, both checked
                // where they enter.
                if l.device().is_cpu() {
                    let k = self.cfg.num_class_embeds.unwrap_or(0) as u32;
                    if let Some(bad) = l.to_vec1::<u32>()?.iter().find(|c| **c >= k) {
                        return Err(Error::invalid(format!(
                            "class label {bad} is outside [0, {k})"
                        )));
                    }
                }
                Ok(Some(e.forward(&l)?))
            }
        }
    }

    /// Forward pass that also returns the named intermediates (time_proj,
    /// time_embedding.linear_1, time_embedding, debug.*), for tests against diffusers.
    pub fn forward_with_intermediates(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Intermediates::new();
        let out = self.run(x, timesteps, None, false, Some(&mut rec))?;
        Ok((out, rec))
    }

    fn check_input(&self, x: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 {
            return Err(Error::invalid(format!(
                "UNet input must be [B, C, H, W], got shape {dims:?}"
            )));
        }
        if x.dtype() != DType::F32 {
            return Err(Error::invalid(format!(
                "UNet input must be f32, got {:?}",
                x.dtype()
            )));
        }
        if dims[1] != self.cfg.in_channels {
            return Err(Error::invalid(format!(
                "UNet input has {} channels, the model expects in_channels = {}",
                dims[1], self.cfg.in_channels
            )));
        }
        let factor = 1usize << (self.cfg.block_out_channels.len() - 1);
        if !dims[2].is_multiple_of(factor)
            || !dims[3].is_multiple_of(factor)
            || dims[2] == 0
            || dims[3] == 0
        {
            return Err(Error::invalid(format!(
                "UNet input size {}x{} must be a positive multiple of {factor} (one halving per down block but the last)",
                dims[2], dims[3]
            )));
        }
        let b = dims[0];
        let n = timesteps.elem_count();
        if timesteps.rank() > 1 || (n != 1 && n != b) {
            return Err(Error::invalid(format!(
                "timesteps must be a scalar or have shape [{b}], got {:?}",
                timesteps.dims()
            )));
        }
        let t = timesteps.flatten_all()?;
        // diffusers broadcasts one timestep over the batch.
        Ok(if n == 1 && b != 1 {
            t.broadcast_as(b)?.contiguous()?
        } else {
            t
        })
    }

    fn run(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
        mut rec: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let t = self.check_input(x, timesteps)?;
        let mut put = |name: &str, v: &Tensor| {
            if let Some(r) = rec.as_deref_mut() {
                r.insert(name.to_string(), v.clone());
            }
        };
        let x = if self.cfg.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };
        // Half-precision weights: the network runs in their dtype (diffusers casts the time
        // embedding the same way); the caller's f32 in and out keep the sampler math in f32.
        let dtype = self.dtype();
        let x = x.to_dtype(dtype)?;
        let c0 = self.cfg.block_out_channels[0];
        let t_proj = ops::timestep_embedding(&t, &self.freqs, c0, self.cfg.flip_sin_to_cos)?
            .to_dtype(dtype)?;
        put("time_proj", &t_proj);
        let l1 = ops::linear(&self.time_embedding.linear_1, &t_proj)?;
        put("time_embedding.linear_1", &l1);
        let emb = ops::linear(&self.time_embedding.linear_2, &ops::silu(&l1)?)?;
        put("time_embedding", &emb);
        let emb = match self.class_emb(class_labels, x.dim(0)?)? {
            Some(c) => (emb + c)?,
            None => emb,
        };
        let temb_act = ops::silu(&emb)?;
        let ctx = Ctx {
            temb_act: &temb_act,
            train,
            dropout: self.cfg.dropout,
            rng: &self.dropout_rng,
        };

        let mut h = ops::conv2d(&self.conv_in, &x)?;
        put("debug.conv_in", &h);
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (nh, res) = block.forward(&h, &ctx)?;
            h = nh;
            put(&format!("debug.down_blocks.{i}.hidden"), &h);
            for (j, r) in res.iter().enumerate() {
                put(&format!("debug.down_blocks.{i}.res.{j}"), r);
            }
            skips.extend(res);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &ctx)?;
            put("debug.mid_block", &h);
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.num_resnets();
            let rest = skips.split_off(skips.len() - k);
            h = block.forward(&h, &rest, &ctx)?;
            put(&format!("debug.up_blocks.{i}"), &h);
        }
        let h = ops::group_norm(&self.conv_norm_out, &h)?;
        put("debug.conv_norm_out", &h);
        let out = ops::conv2d(&self.conv_out, &ops::silu(&h)?)?;
        Ok(out.to_dtype(DType::F32)?)
    }
}
