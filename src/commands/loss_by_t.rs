//! `diffuse eval --loss-by-t`: a model's denoising loss on real images in equal bands of t
//! (see `eval::loss_by_t`), as a table and a chart.
use crate::core::forward::ForwardProcess;
use crate::core::schedule::Schedule;
use crate::data::{self, DataConfig};
use crate::error::{Error, Result};
use crate::eval::loss_by_t::{check_bands, loss_by_t, Band};
use crate::io::output;
use crate::io::plot::{self, Panel, Series};
use crate::limits;
use crate::pipeline;
use crate::progress::Progress;
use crate::unet;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Images the loss is measured on by default (per band: one t and one noise draw each).
pub const DEFAULT_IMAGES: usize = 512;
pub const DEFAULT_BANDS: usize = 10;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossByTRequest {
    pub model: String,
    /// The real images (the test split: held out from training).
    pub data: DataConfig,
    pub num: usize,
    pub bands: usize,
    pub seed: u64,
    pub batch_size: usize,
    /// The chart (.png or .svg).
    pub output: PathBuf,
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossByT {
    pub model: String,
    pub prediction: String,
    pub dataset: String,
    pub images: usize,
    pub bands: Vec<Band>,
    pub written: Vec<PathBuf>,
}

impl LossByT {
    pub fn table(&self) -> String {
        let mut s = format!(
            "# {} ({} prediction): denoising loss on {} images of {}, by band of t (loss: MSE on the training target; x0_loss: MSE of the x0 it implies)\nt_lo\tt_hi\tloss\tx0_loss\n",
            self.model, self.prediction, self.images, self.dataset
        );
        for b in &self.bands {
            s.push_str(&format!(
                "{}\t{}\t{:.6}\t{:.6}\n",
                b.t_lo, b.t_hi, b.loss, b.x0_loss
            ));
        }
        s
    }
}

pub fn run(req: &LossByTRequest, device: &Device) -> Result<LossByT> {
    limits::check_count("--num", req.num, 100_000, "the loss settles long before")?;
    limits::check_count(
        "--batch-size",
        req.batch_size,
        limits::MAX_NUM,
        "the bound of --num",
    )?;
    plot::check_figure_path(&req.output)?;
    let loc = pipeline::locate(&req.model)?;
    let protected: Vec<&std::path::Path> = loc.root.as_deref().into_iter().collect();
    output::check_outputs(&[&req.output], &[], &protected)?;
    let sc = loc.scheduler()?;
    let fp = ForwardProcess::new(Schedule::new(&sc.schedule_config()?)?, device)?;
    // Before the model loads.
    check_bands(req.bands, fp.schedule.len())?;
    let (ucfg, vm, _) = unet::load(&loc.unet_dir, device)?;
    let model = unet::frozen(&ucfg, &vm, device)?;
    limits::check_batch_memory("--batch-size", req.batch_size, ucfg.bytes_per_image(false)?)?;
    let mut dcfg = req.data.clone();
    dcfg.limit = Some(req.num);
    dcfg.hflip = Some(false);
    let ds = data::load(&dcfg)?;
    if ds.image_dims() != ucfg.image_shape()? {
        return Err(Error::Model(format!(
            "{} has {:?} images; the model takes {:?}",
            ds.name,
            ds.image_dims(),
            ucfg.image_shape()?
        )));
    }
    // A class-conditional model is measured as it trained: with the images' labels, else
    // (unlabelled data) with its null class.
    let labels: Option<Vec<u32>> = match model.num_class_embeds() {
        None => None,
        Some(k) => {
            Some(match &ds.labels {
                Some(l) => l.to_dtype(DType::U32)?.to_vec1()?,
                None => {
                    let null = loc.classes(k)?.null_class.ok_or_else(|| {
                    Error::invalid("this class-conditional model has no null class, and the images no labels")
                })?;
                    vec![null as u32; ds.len()]
                }
            })
        }
    };
    let n = ds.len();
    let batches = n.div_ceil(req.batch_size) * req.bands;
    let mut pb = Progress::new("loss by t", "batch", batches as u64, 0, req.progress);
    let mut f = |x: &Tensor, t: &Tensor, rows: std::ops::Range<usize>| -> Result<Tensor> {
        match &labels {
            Some(l) => {
                let l = Tensor::new(&l[rows], device)?;
                model.forward_cond(x, t, Some(&l), false)
            }
            None => model.forward(x, t, false),
        }
    };
    let bands = loss_by_t(
        &mut f,
        &ds.images,
        &fp,
        sc.prediction_type,
        req.bands,
        req.seed,
        req.batch_size,
        &mut || pb.inc(1),
    )?;
    pb.finish();
    if let Some(b) = bands.iter().find(|b| !b.loss.is_finite()) {
        return Err(Error::Runtime(format!(
            "the loss is not finite for t in [{}, {}]: the model's outputs diverged; nothing was written",
            b.t_lo, b.t_hi
        )));
    }
    let prediction = format!("{:?}", sc.prediction_type).to_lowercase();
    let mid = |b: &Band| (b.t_lo + b.t_hi) as f64 / 2.0;
    let curve = |name: &str, f: &dyn Fn(&Band) -> f64| Series {
        name: name.to_string(),
        points: bands.iter().map(|b| (mid(b), f(b))).collect(),
    };
    plot::write_figure(
        &req.output,
        "t (band centre)",
        &[
            Panel {
                title: format!(
                    "{}, denoising loss by t ({n} images of {})",
                    req.model, ds.name
                ),
                y_label: format!("MSE on the {prediction} target"),
                series: vec![curve(&format!("{} bands", bands.len()), &|b| b.loss)],
            },
            Panel {
                title: "the same errors as the x0 they imply".into(),
                y_label: "MSE of x0".into(),
                series: vec![curve("x0", &|b| b.x0_loss)],
            },
        ],
    )?;
    Ok(LossByT {
        model: req.model.clone(),
        prediction,
        dataset: ds.name,
        images: n,
        bands,
        written: vec![req.output.clone()],
    })
}
