//! `cargo bench --bench data`: median load times for the bundled 10k MNIST digits and a 60k
//! IDX set synthesised in a temp dir (the real digits tiled 6x, so gzip ratios are realistic),
//! plain and gzip, plus seeded batch assembly.
use candle_core::Device;
use diffuse::data::{self, BatchConfig, Batches, DataConfig, Split};
use std::io::Write;
use std::time::Instant;

/// Median seconds of `repeats` calls after one warm-up (which also fills the page cache).
fn median<F: FnMut()>(mut f: F, repeats: usize) -> f64 {
    f();
    let mut v: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut out).unwrap();
    out
}

fn main() {
    let repeats = 11;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let images = gunzip(&std::fs::read(root.join("t10k-images-idx3-ubyte.gz")).unwrap());
    let labels = gunzip(&std::fs::read(root.join("t10k-labels-idx1-ubyte.gz")).unwrap());
    let (px, lb) = (&images[16..], &labels[8..]);
    let tile = |b: &[u8]| b.repeat(6);
    let img60 = data::idx::encode(&[60000, 28, 28], &tile(px));
    let lab60 = data::idx::encode(&[60000], &tile(lb));

    let plain = tempfile::tempdir().unwrap();
    let gz = tempfile::tempdir().unwrap();
    std::fs::write(plain.path().join("train-images-idx3-ubyte"), &img60).unwrap();
    std::fs::write(plain.path().join("train-labels-idx1-ubyte"), &lab60).unwrap();
    for (name, bytes) in [
        ("train-images-idx3-ubyte.gz", &img60),
        ("train-labels-idx1-ubyte.gz", &lab60),
    ] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        std::fs::write(gz.path().join(name), e.finish().unwrap()).unwrap();
    }
    let cfg = |dir: &std::path::Path| DataConfig {
        dataset: "mnist".into(),
        data_dir: dir.to_path_buf(),
        split: Split::Train,
        ..DataConfig::default()
    };

    println!(
        "data loading, median of {repeats} (threads: {})",
        rayon::current_num_threads()
    );
    let t = median(
        || {
            let l = data::mnist::load_bundled().unwrap();
            data::Dataset::from_loaded(l, "mnist".into(), false, 0).unwrap();
        },
        repeats,
    );
    println!(
        "  bundled 10k (gzip, in binary) -> tensor   {:8.1} ms",
        t * 1e3
    );
    let t = median(|| drop(data::load(&cfg(plain.path())).unwrap()), repeats);
    println!(
        "  60k IDX plain (file) -> tensor            {:8.1} ms",
        t * 1e3
    );
    let t = median(|| drop(data::load(&cfg(gz.path())).unwrap()), repeats);
    println!(
        "  60k IDX gzip (file) -> tensor             {:8.1} ms",
        t * 1e3
    );
    let t = median(|| drop(data::idx::bytes_to_unit(&img60[16..])), repeats);
    println!(
        "  of which u8 -> f32 [-1,1] (47 MB, fresh)  {:8.1} ms",
        t * 1e3
    );

    let lut: [f32; 256] = std::array::from_fn(|i| i as f32 / 127.5 - 1.0);
    // Bound: the same conversion into memory already faulted in; the gap to the line above
    // is first-touch page faults on the fresh 188 MB buffer.
    let mut buf = vec![0f32; img60.len() - 16];
    let t = median(
        || {
            for (o, b) in buf.iter_mut().zip(&img60[16..]) {
                *o = lut[*b as usize]
            }
        },
        repeats,
    );
    println!(
        "  bound: same, into a touched buffer        {:8.1} ms",
        t * 1e3
    );
    let ds = data::load(&cfg(plain.path())).unwrap();
    let bcfg = BatchConfig {
        batch_size: 128,
        hflip: true,
        ..BatchConfig::default()
    };
    let mut it = Batches::new(&ds, bcfg, 0, &Device::Cpu).unwrap();
    let n = it.batches_per_epoch();
    let t = median(
        || {
            for _ in 0..n {
                it.next_batch().unwrap();
            }
        },
        3,
    );
    println!(
        "  one epoch of 128-batches with flips ({n}) {:8.1} ms ({:.1} us/batch)",
        t * 1e3,
        t * 1e6 / n as f64
    );
}
