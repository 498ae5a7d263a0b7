//! `diffuse data show`.
use super::FlipArgs;
use clap::{Args, Subcommand};
use diffuse::commands::data::{self as command, ShowRequest};
use diffuse::data::{DataConfig, Split};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DataCmd {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Write a grid of real images from a dataset (the first shuffled batch for --seed).
    Show(ShowCmd),
}

/// Dataset flags shared by every subcommand that reads training data.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// mnist | fashion-mnist | cifar10 | PATH to a folder of PNG/JPEG images.
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// Local copies of named datasets: DIR/mnist, DIR/fashion-mnist, DIR/cifar10 [default:
    /// data, relative to the current directory, falling back to the hub cache and the
    /// bundled MNIST digits]. A directory given here must exist, and is never replaced by the
    /// bundled digits.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// train or test [default: train; eval --loss-by-t: test].
    #[arg(long, value_parser = parse_split)]
    pub split: Option<Split>,
    /// Folder datasets: resize (shorter side) and centre crop to N x N (at most 4096).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Folder datasets: 1 (gray) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    #[command(flatten)]
    pub flip: FlipArgs,
    /// Keep only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
}

fn parse_split(s: &str) -> Result<Split, String> {
    s.parse().map_err(|e: diffuse::Error| e.to_string())
}

impl DataArgs {
    pub fn config(&self) -> DataConfig {
        DataConfig {
            dataset: self.dataset.clone(),
            data_dir_given: self.data_dir.is_some(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DATA_DIR)),
            split: self.split.unwrap_or(Split::Train),
            sample_size: self.size,
            in_channels: self.channels,
            hflip: self.flip.value(),
            limit: self.limit,
        }
    }
}

#[derive(Args, Debug)]
struct ShowCmd {
    #[command(flatten)]
    data: DataArgs,
    /// Number of images in the grid (at most 10,000).
    #[arg(short = 'n', long, default_value_t = 64)]
    num: usize,
    /// Output PNG.
    #[arg(short, long, value_name = "FILE", default_value = "grid.png")]
    output: PathBuf,
    /// Shuffle (and flip) seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(cmd: DataCmd) -> anyhow::Result<()> {
    match cmd.command {
        DataCommand::Show(c) => {
            let req = ShowRequest {
                data: c.data.config(),
                num: c.num,
                output: c.output,
                seed: c.seed,
            };
            super::emit(&format!("{}\n", command::show(&req)?))
        }
    }
}
