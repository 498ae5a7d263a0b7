//! `diffuse data show`: load a dataset and write a grid of its images.
use clap::{Args, Subcommand};
use diffuse::data::{self, DataConfig, Split};
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
    /// Local copies of named datasets: DIR/mnist, DIR/fashion-mnist, DIR/cifar10.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// train or test.
    #[arg(long, default_value = "train", value_parser = parse_split)]
    pub split: Split,
    /// Folder datasets: resize (shorter side) and centre crop to N x N.
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Folder datasets: 1 (gray) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Random horizontal flips (default: on for cifar10 and folders, off for digits).
    #[arg(long, overrides_with = "no_hflip")]
    pub hflip: bool,
    /// No random horizontal flips.
    #[arg(long)]
    pub no_hflip: bool,
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
            data_dir: self.data_dir.clone(),
            split: self.split,
            sample_size: self.size,
            in_channels: self.channels,
            hflip: match (self.hflip, self.no_hflip) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            limit: self.limit,
        }
    }
}

#[derive(Args, Debug)]
struct ShowCmd {
    #[command(flatten)]
    data: DataArgs,
    /// Number of images in the grid.
    #[arg(short = 'n', default_value_t = 64)]
    n: usize,
    /// Output PNG.
    #[arg(short, long, default_value = "grid.png")]
    output: PathBuf,
    /// Shuffle (and flip) seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(cmd: DataCmd) -> anyhow::Result<()> {
    match cmd.command {
        DataCommand::Show(c) => show(c),
    }
}

fn show(c: ShowCmd) -> anyhow::Result<()> {
    let ds = data::load(&c.data.config())?;
    let img = data::preview::grid(&ds, c.n, c.seed)?;
    diffuse::imageio::save_png(&img, &c.output)?;
    let (ch, h, w) = ds.image_dims();
    println!(
        "{}: {} images {ch}x{h}x{w} from {}{}; wrote {} ({} images)",
        ds.name,
        ds.len(),
        ds.source,
        if ds.skipped > 0 {
            format!(" ({} unreadable skipped)", ds.skipped)
        } else {
            String::new()
        },
        c.output.display(),
        c.n.min(ds.len())
    );
    Ok(())
}
