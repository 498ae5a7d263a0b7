//! The hub path without network: a temporary HF_HOME laid out like the hub cache (refs,
//! snapshots pointing at blobs) holding tiny parquet files written here, HF_HUB_OFFLINE=1.
//! One test function, because HF_HOME is process-wide.
mod common;
use diffuse::data::{self, DataConfig, Split};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::path::Path;
use std::sync::Arc;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Pixel (y, x, channel k) of test image i: distinct per image and position.
fn px(i: usize, y: usize, x: usize, k: usize) -> u8 {
    ((i * 37 + y * 5 + x * 3 + k * 11) % 256) as u8
}

fn png(i: usize, side: usize, channels: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..side {
        for x in 0..side {
            for k in 0..channels {
                raw.push(px(i, y, x, k));
            }
        }
    }
    let img = if channels == 1 {
        image::DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(side as u32, side as u32, raw).unwrap(),
        )
    } else {
        image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(side as u32, side as u32, raw).unwrap(),
        )
    };
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    buf
}

/// A parquet file shaped like the hub's conversion: image {bytes, path}, label int64.
fn write_parquet(path: &Path, image_col: &str, images: &[Vec<u8>], labels: &[i64]) {
    let schema = format!(
        "message schema {{ required group {image_col} {{ optional binary bytes; optional binary path (UTF8); }} optional int64 label; }}"
    );
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&schema).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let n = images.len();
    // image.bytes: all present.
    let mut col = rg.next_column().unwrap().unwrap();
    let vals: Vec<ByteArray> = images.iter().map(|b| ByteArray::from(b.clone())).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&vals, Some(&vec![1; n]), None)
        .unwrap();
    col.close().unwrap();
    // image.path: all null.
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&[], Some(&vec![0; n]), None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(labels, Some(&vec![1; n]), None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

fn cache_file(hub: &Path, repo_folder: &str, filename: &str, write: impl FnOnce(&Path)) {
    common::hub_cache_file(
        hub,
        repo_folder,
        "refs/convert/parquet",
        COMMIT,
        filename,
        write,
    );
}

fn bytes_of(t: &candle_core::Tensor) -> Vec<u8> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter()
        .map(|x| ((x + 1.0) * 127.5).round() as u8)
        .collect()
}

#[test]
fn hub_cache_offline_mnist_cifar_and_fallbacks() {
    let home = tempfile::tempdir().unwrap();
    let empty_data = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let hub = home.path().join("hub");
    let cfg = |name: &str, split| DataConfig {
        dataset: name.into(),
        data_dir: empty_data.path().to_path_buf(),
        split,
        ..DataConfig::default()
    };

    // Nothing cached: mnist falls back to the bundled digits, cifar10 is a one-line error.
    let ds = data::load(&cfg("mnist", Split::Train)).unwrap();
    assert_eq!(ds.len(), 10000);
    assert!(ds.source.contains("bundled"), "{}", ds.source);
    let e = data::load(&cfg("cifar10", Split::Train))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cifar10 not found") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    // MNIST train split in the cache: 5 digits.
    let labels = [3i64, 1, 4, 1, 5];
    cache_file(
        &hub,
        "datasets--ylecun--mnist",
        "mnist/train/0000.parquet",
        |p| {
            let imgs: Vec<Vec<u8>> = (0..5).map(|i| png(i, 28, 1)).collect();
            write_parquet(p, "image", &imgs, &labels)
        },
    );
    let ds = data::load(&cfg("mnist", Split::Train)).unwrap();
    assert_eq!(ds.images.dims(), &[5, 1, 28, 28]);
    assert!(ds.source.contains("hub ylecun/mnist"), "{}", ds.source);
    let l: Vec<u32> = ds.labels.as_ref().unwrap().to_vec1().unwrap();
    assert_eq!(l, vec![3, 1, 4, 1, 5]);
    let b = bytes_of(&ds.images);
    for i in 0..5 {
        for (y, x) in [(0, 0), (3, 17), (27, 27)] {
            assert_eq!(b[i * 784 + y * 28 + x], px(i, y, x, 0));
        }
    }
    assert!(!ds.hflip, "digits are not flipped by default");

    // CIFAR-10 test split: RGB, and channel/row/column order must be CHW, not transposed.
    cache_file(
        &hub,
        "datasets--uoft-cs--cifar10",
        "plain_text/test/0000.parquet",
        |p| {
            let imgs: Vec<Vec<u8>> = (0..3).map(|i| png(i, 32, 3)).collect();
            write_parquet(p, "img", &imgs, &[9, 0, 2])
        },
    );
    let ds = data::load(&cfg("cifar10", Split::Test)).unwrap();
    assert_eq!(ds.images.dims(), &[3, 3, 32, 32]);
    assert!(ds.hflip, "cifar10 flips by default");
    let b = bytes_of(&ds.images);
    for i in 0..3 {
        for (k, y, x) in [(0, 0, 0), (1, 2, 30), (2, 31, 5)] {
            assert_eq!(b[i * 3072 + k * 1024 + y * 32 + x], px(i, y, x, k));
        }
    }

    // A corrupt cached parquet file is an error naming the file, not a silent fallback.
    cache_file(
        &hub,
        "datasets--zalando-datasets--fashion_mnist",
        "fashion_mnist/test/0000.parquet",
        |p| std::fs::write(p, b"PAR1 this is not parquet").unwrap(),
    );
    let fashion = DataConfig {
        // Keep the system copy (/usr/share/datasets/fashion-mnist) out of the way only if
        // absent; when installed it legitimately wins, so only check the error otherwise.
        ..cfg("fashion-mnist", Split::Test)
    };
    if !Path::new("/usr/share/datasets/fashion-mnist").exists() {
        let e = data::load(&fashion).unwrap_err().to_string();
        assert!(e.contains("0000.parquet") && e.contains("parquet"), "{e}");
    }
    let e = diffuse::data::hub::read_parquet(
        &hub.join("datasets--zalando-datasets--fashion_mnist/snapshots")
            .join(COMMIT)
            .join("fashion_mnist/test/0000.parquet"),
        1,
        28,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a parquet file"), "{e}");
    // Wrong image size in a parquet file.
    let bad = home.path().join("bad.parquet");
    write_parquet(&bad, "image", &[png(0, 20, 1)], &[1]);
    let e = diffuse::data::hub::read_parquet(&bad, 1, 28)
        .unwrap_err()
        .to_string();
    assert!(e.contains("20x20, expected 28x28"), "{e}");
}
