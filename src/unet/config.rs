//! diffusers' `UNet2DModel` config.json, read and written with diffusers' key names and
//! defaults, plus the checks that turn a config we cannot build into one clear error.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The block kinds this implementation builds (diffusers' class names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Plain,
    Attn,
}

/// diffusers accepts an int or an (h, w) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

fn d_in() -> usize {
    3
}
fn d_true() -> bool {
    true
}
fn d_positional() -> String {
    "positional".into()
}
fn d_down() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn d_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn d_two() -> usize {
    2
}
fn d_one_f() -> f64 {
    1.0
}
fn d_one() -> usize {
    1
}
fn d_conv() -> String {
    "conv".into()
}
fn d_silu() -> String {
    "silu".into()
}
fn d_head() -> Option<usize> {
    Some(8)
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_default() -> String {
    "default".into()
}
fn d_class() -> String {
    "UNet2DModel".into()
}

/// `UNet2DModel.__init__` arguments; a missing key takes diffusers' default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    #[serde(rename = "_class_name", default = "d_class")]
    pub class_name: String,
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: i64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_two")]
    pub layers_per_block: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_conv")]
    pub downsample_type: String,
    #[serde(default = "d_conv")]
    pub upsample_type: String,
    /// Applied in training only (ResnetBlock2D between norm2/SiLU and conv2).
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// `null` means one head spanning all channels (diffusers' fallback), distinct from missing.
    #[serde(default = "d_head")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_true")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    /// Keys we do not model (e.g. `_diffusers_version`): kept out of the output, logged.
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }
}

/// Built-in configurations under models/, embedded so the binary stands alone.
pub const PRESETS: &[(&str, &str)] = &[
    ("mnist", include_str!("../../models/mnist/config.json")),
    ("cifar10", include_str!("../../models/cifar10/config.json")),
];

impl UNetConfig {
    pub fn from_json(text: &str, origin: &Path) -> Result<Self> {
        let cfg: UNetConfig = serde_json::from_str(text).map_err(|e| {
            // serde names the position, not the key: quote the offending line.
            let line = text
                .lines()
                .nth(e.line().saturating_sub(1))
                .unwrap_or("")
                .trim();
            Error::format(origin, format!("not a UNet2DModel config: {e} (`{line}`)"))
        })?;
        for k in cfg.extra.keys() {
            if !k.starts_with('_') {
                tracing::debug!(key = %k, "ignoring unknown UNet2DModel config key");
            }
        }
        cfg.validate()
            .map_err(|e| Error::format(origin, e.to_string()))?;
        Ok(cfg)
    }

    /// (channels, height, width) of the images this model works on; sampling and training need
    /// a `sample_size` in the config.
    pub fn image_shape(&self) -> Result<(usize, usize, usize)> {
        let (h, w) = match self.sample_size {
            Some(SampleSize::Square(s)) => (s, s),
            Some(SampleSize::Rect([h, w])) => (h, w),
            None => {
                return Err(Error::Model(
                    "the UNet config has no sample_size, so the image size is unknown".into(),
                ))
            }
        };
        Ok((self.in_channels, h, w))
    }

    /// A rough upper estimate of the bytes one image occupies at the model's peak: the widest
    /// activation at full resolution, times the tensors alive at once (about 12 in a forward
    /// pass; about 60 when training keeps every activation for the backward pass). Used only
    /// to refuse batches that cannot fit in memory (mnist preset, batch 64, training: ~0.8 GB
    /// estimated against 0.85 GB peak RSS measured).
    pub fn bytes_per_image(&self, training: bool) -> Result<u64> {
        let (_, h, w) = self.image_shape()?;
        let widest = self.block_out_channels.iter().copied().max().unwrap_or(1) as u64;
        let live = if training { 60 } else { 12 };
        Ok(widest * (h * w) as u64 * 4 * live)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::io::input::read_text(path, 1 << 20)?;
        Self::from_json(&text, path)
    }

    pub fn preset(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Self::from_json(text, Path::new(n)).expect("built-in preset is valid"))
    }

    /// Pretty JSON in diffusers' layout (sorted keys, `_class_name` first).
    pub fn to_json(&self) -> String {
        let v = serde_json::to_value(self).expect("config serialises");
        let sorted: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(v).expect("object");
        serde_json::to_string_pretty(&sorted).expect("config serialises") + "\n"
    }

    /// Dimension of the time embedding fed to every resnet.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    pub fn down_kinds(&self) -> Result<Vec<BlockKind>> {
        self.down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "DownBlock2D" => Ok(BlockKind::Plain),
                "AttnDownBlock2D" => Ok(BlockKind::Attn),
                other => Err(Error::Model(format!(
                    "unsupported down block type '{other}' (supported: DownBlock2D, AttnDownBlock2D)"
                ))),
            })
            .collect()
    }

    pub fn up_kinds(&self) -> Result<Vec<BlockKind>> {
        self.up_block_types
            .iter()
            .map(|t| match t.as_str() {
                "UpBlock2D" => Ok(BlockKind::Plain),
                "AttnUpBlock2D" => Ok(BlockKind::Attn),
                other => Err(Error::Model(format!(
                    "unsupported up block type '{other}' (supported: UpBlock2D, AttnUpBlock2D)"
                ))),
            })
            .collect()
    }

    /// Group count of the mid block's attention norm (diffusers: attn_norm_num_groups, else
    /// the resnets' groups).
    pub fn mid_attn_groups(&self) -> usize {
        self.attn_norm_num_groups.unwrap_or(self.norm_num_groups)
    }

    /// Every configuration we cannot build exactly as diffusers would is an error here.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Model(m));
        if self.class_name != "UNet2DModel" {
            return bad(format!(
                "_class_name is '{}', expected 'UNet2DModel'",
                self.class_name
            ));
        }
        self.down_kinds()?;
        self.up_kinds()?;
        let n = self.block_out_channels.len();
        if n == 0 {
            return bad("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "block_out_channels has {n} entries but down_block_types has {} and up_block_types {}; all three must match",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad("in_channels and out_channels must be at least 1".into());
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block must be at least 1".into());
        }
        if self.norm_num_groups == 0 {
            return bad("norm_num_groups must be at least 1".into());
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || c % self.norm_num_groups != 0 {
                return bad(format!(
                    "block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            let (c, g) = (self.block_out_channels[n - 1], self.mid_attn_groups());
            if g == 0 || c % g != 0 {
                return bad(format!(
                    "mid block channels {c} are not divisible by attn_norm_num_groups = {g}"
                ));
            }
        }
        if let Some(d) = self.attention_head_dim {
            // Only blocks with attention use it (as in diffusers): attention down blocks, the
            // matching up blocks (widths reversed), and the mid block (last width).
            let rev: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
            let mut widths: Vec<usize> = Vec::new();
            for (i, k) in self.down_kinds()?.iter().enumerate() {
                if *k == BlockKind::Attn {
                    widths.push(self.block_out_channels[i]);
                }
            }
            for (i, k) in self.up_kinds()?.iter().enumerate() {
                if *k == BlockKind::Attn {
                    widths.push(rev[i]);
                }
            }
            if self.mid_block_type.is_some() && self.add_attention {
                widths.push(self.block_out_channels[n - 1]);
            }
            let min_c = widths.iter().copied().min().unwrap_or(usize::MAX);
            if d == 0 || d > min_c {
                return bad(format!(
                    "attention_head_dim = {d} must be between 1 and the narrowest attention block width {min_c}"
                ));
            }
        }
        let c0 = self.block_out_channels[0];
        if c0 < 2 || (c0 / 2) as i64 <= self.freq_shift {
            return bad(format!(
                "freq_shift = {} must be below block_out_channels[0] / 2 = {}",
                self.freq_shift,
                c0 / 2
            ));
        }
        if self.time_embedding_dim == Some(0) {
            return bad("time_embedding_dim must be at least 1".into());
        }
        let unsupported = |key: &str, value: &str, ok: &str| {
            Err(Error::Model(format!(
                "{key} '{value}' is not supported (supported: {ok})"
            )))
        };
        if self.time_embedding_type != "positional" {
            return unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "positional",
            );
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported("act_fn", &self.act_fn, "silu");
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported(
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "default",
            );
        }
        if self.downsample_type != "conv" {
            return unsupported("downsample_type", &self.downsample_type, "conv");
        }
        if self.upsample_type != "conv" {
            return unsupported("upsample_type", &self.upsample_type, "conv");
        }
        if self.downsample_padding > 1 {
            return bad(format!(
                "downsample_padding = {} is not supported (0 or 1)",
                self.downsample_padding
            ));
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(other) => return unsupported("mid_block_type", other, "UNetMidBlock2D or null"),
        }
        if let Some(c) = &self.class_embed_type {
            return unsupported("class_embed_type", c, "null");
        }
        if self.num_class_embeds == Some(0) {
            return bad(
                "num_class_embeds = 0: a class-conditional model needs at least one class".into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.norm_eps.is_nan()
            || self.norm_eps <= 0.0
            || !self.mid_block_scale_factor.is_finite()
            || self.mid_block_scale_factor == 0.0
        {
            return bad(
                "norm_eps must be > 0 and mid_block_scale_factor finite and non-zero".into(),
            );
        }
        Ok(())
    }
}

/// `mnist`, `cifar10`, or a path: a config.json, a model directory, or a diffusers pipeline
/// directory with a unet/ subfolder.
pub fn preset_or_file(name_or_path: &str) -> Result<UNetConfig> {
    if let Some(cfg) = UNetConfig::preset(name_or_path) {
        return Ok(cfg);
    }
    let p = PathBuf::from(name_or_path);
    if p.is_dir() {
        return UNetConfig::from_file(&crate::unet::io::model_dir(&p)?.join("config.json"));
    }
    if p.is_file() {
        return UNetConfig::from_file(&p);
    }
    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    if crate::io::input::looks_like_path(name_or_path) {
        // A path that is not there: a missing file (exit 1), not a bad flag value.
        return Err(Error::io(
            &p,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "no such file or directory (and not a preset: {})",
                    names.join(", ")
                ),
            ),
        ));
    }
    Err(Error::invalid(format!(
        "'{name_or_path}' is neither a preset ({}) nor an existing file or directory",
        names.join(", ")
    )))
}
