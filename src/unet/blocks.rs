//! diffusers' UNet building blocks: ResnetBlock2D, the deprecated-style spatial Attention,
//! Downsample2D / Upsample2D, and the Down/Up/Mid blocks that chain them. Field names follow
//! diffusers' module names so VarBuilder paths equal its state-dict keys.
use super::ops::{self, GroupNorm};
use crate::core::rng::NoiseRng;
use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Linear, VarBuilder};
use std::sync::Mutex;

/// What a forward pass needs besides the hidden state.
pub struct Ctx<'a> {
    /// SiLU(time embedding): every resnet applies SiLU before its projection, so it is done once.
    pub temb_act: &'a Tensor,
    pub train: bool,
    pub dropout: f64,
    pub rng: &'a Mutex<NoiseRng>,
}

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, c_in, eps, vb.pp("norm1"))?,
            conv1: ops::conv2d_layer(c_in, c_out, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(temb, c_out, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(groups, c_out, eps, vb.pp("norm2"))?,
            conv2: ops::conv2d_layer(c_out, c_out, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if c_in != c_out {
                Some(ops::conv2d_layer(
                    c_in,
                    c_out,
                    1,
                    0,
                    1,
                    vb.pp("conv_shortcut"),
                )?)
            } else {
                None
            },
            output_scale_factor,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = ops::group_norm_silu(&self.norm1, x)?;
        // The time embedding joins conv1's bias as one [B, C] bias added inside the conv.
        let t = ops::linear(&self.time_emb_proj, ctx.temb_act)?;
        let bias = match self.conv1.bias() {
            Some(b) => t.broadcast_add(b)?,
            None => t,
        };
        let h = ops::conv2d_bias(&self.conv1, &h, &bias)?;
        let mut h = ops::group_norm_silu(&self.norm2, &h)?;
        if ctx.train && ctx.dropout > 0.0 {
            let mut rng = ctx.rng.lock().expect("dropout rng");
            h = ops::dropout(&h, ctx.dropout, &mut rng)?;
        }
        let h = ops::conv2d(&self.conv2, &h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => ops::conv2d(c, x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers `Attention(..., residual_connection=True, _from_deprecated_attn_block=True)` over
/// the H*W positions of a feature map.
#[derive(Debug)]
pub struct SpatialAttention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    rescale_output_factor: f64,
}

impl SpatialAttention {
    /// `head_dim` None means one head over all channels (diffusers' fallback).
    pub fn new(
        channels: usize,
        head_dim: Option<usize>,
        groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let head_dim = head_dim.unwrap_or(channels);
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        Ok(Self {
            group_norm: match groups {
                Some(g) => Some(GroupNorm::new(g, channels, eps, vb.pp("group_norm"))?),
                None => None,
            },
            to_q: candle_nn::linear(channels, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, channels, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
            rescale_output_factor,
        })
    }

    /// Channels-first throughout: the projections are 1x1 convolutions on [B, C, H, W] and
    /// attention works on q^T, k^T, v^T of [B * heads, head_dim, N], so no [B, N, C]
    /// transpose is ever copied (those copies were ~4% of a train step).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let n = h * w;
        let hs = match &self.group_norm {
            Some(gn) => ops::group_norm(gn, x)?,
            None => x.clone(),
        };
        let heads = |t: Tensor| t.reshape((b * self.heads, self.head_dim, n));
        let q = heads(ops::linear_1x1(&self.to_q, &hs)?)?;
        let k = heads(ops::linear_1x1(&self.to_k, &hs)?)?;
        let v = heads(ops::linear_1x1(&self.to_v, &hs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = ops::attention_channels_first(&q, &k, &v, scale)?.reshape((
            b,
            self.heads * self.head_dim,
            h,
            w,
        ))?;
        let out = (ops::linear_1x1(&self.to_out, &o)? + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }
}

/// Downsample2D(use_conv=True): stride-2 3x3 conv; padding 0 pads right/bottom by one first.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: ops::conv2d_layer(channels, channels, 3, padding, 2, vb.pp("conv"))?,
            pad_right_bottom: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            ops::conv2d(&self.conv, &x)
        } else {
            ops::conv2d(&self.conv, x)
        }
    }
}

/// Upsample2D(use_conv=True): nearest 2x, then a 3x3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: ops::conv2d_layer(channels, channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(&self.conv, &ops::upsample_nearest2x(x)?)
    }
}

/// Shared settings for building blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockOpts {
    pub temb: usize,
    pub groups: usize,
    pub eps: f64,
    pub head_dim: Option<usize>,
}

/// DownBlock2D / AttnDownBlock2D.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        attn: bool,
        downsample_padding: Option<usize>,
        o: BlockOpts,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let ci = if i == 0 { c_in } else { c_out };
            resnets.push(ResnetBlock2D::new(
                ci,
                c_out,
                o.temb,
                o.groups,
                o.eps,
                1.0,
                vb.pp("resnets").pp(i),
            )?);
            if attn {
                attentions.push(SpatialAttention::new(
                    c_out,
                    o.head_dim,
                    Some(o.groups),
                    o.eps,
                    1.0,
                    vb.pp("attentions").pp(i),
                )?);
            }
        }
        let downsampler = match downsample_padding {
            Some(p) => Some(Downsample2D::new(c_out, p, vb.pp("downsamplers").pp(0))?),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the hidden state and the skip tensors it contributes, in diffusers' order.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, ctx)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            skips.push(h.clone());
        }
        Ok((h, skips))
    }
}

/// UpBlock2D / AttnUpBlock2D.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Channel bookkeeping as diffusers: resnet i sees (prev or out) + (skip) channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_prev: usize,
        c_out: usize,
        layers: usize,
        attn: bool,
        upsample: bool,
        o: BlockOpts,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { c_in } else { c_out };
            let ci = if i == 0 { c_prev } else { c_out };
            resnets.push(ResnetBlock2D::new(
                ci + skip,
                c_out,
                o.temb,
                o.groups,
                o.eps,
                1.0,
                vb.pp("resnets").pp(i),
            )?);
            if attn {
                attentions.push(SpatialAttention::new(
                    c_out,
                    o.head_dim,
                    Some(o.groups),
                    o.eps,
                    1.0,
                    vb.pp("attentions").pp(i),
                )?);
            }
        }
        let upsampler = if upsample {
            Some(Upsample2D::new(c_out, vb.pp("upsamplers").pp(0))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    pub fn num_resnets(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip tensors in push order; they are consumed from the end.
    pub fn forward(&self, x: &Tensor, skips: &[Tensor], ctx: &Ctx) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            let s = &skips[skips.len() - 1 - i];
            h = Tensor::cat(&[&h, s], 1)?;
            h = r.forward(&h, ctx)?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h)?;
        }
        Ok(h)
    }
}

/// UNetMidBlock2D: resnet, (attention, resnet).
#[derive(Debug)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<SpatialAttention>,
}

impl MidBlock {
    pub fn new(
        channels: usize,
        add_attention: bool,
        attn_groups: usize,
        scale: f64,
        o: BlockOpts,
        vb: VarBuilder,
    ) -> Result<Self> {
        let r = |i: usize| {
            ResnetBlock2D::new(
                channels,
                channels,
                o.temb,
                o.groups,
                o.eps,
                scale,
                vb.pp("resnets").pp(i),
            )
        };
        let first = r(0)?;
        let attention = if add_attention {
            Some(SpatialAttention::new(
                channels,
                o.head_dim,
                Some(attn_groups),
                o.eps,
                scale,
                vb.pp("attentions").pp(0),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets: vec![first, r(1)?],
            attention,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, ctx)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h, ctx)
    }
}
