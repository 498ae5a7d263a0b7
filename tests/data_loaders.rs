//! Loaders on real and generated inputs: the bundled MNIST digits (values computed once with
//! Python's gzip+struct and hard-coded), local IDX gzip and plain, CIFAR-10 binary batches,
//! folders of PNG/JPEG, and corrupt inputs giving one-line errors.
use candle_core::Tensor;
use diffuse::data::{self, DataConfig, Split};
use std::io::Write;
use std::path::{Path, PathBuf};

const MNIST_TEST_HISTOGRAM: [usize; 10] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];
/// Raw byte sums of test images 0, 1 and 9999, and of all 10,000.
const PIXEL_SUMS: [(usize, u64); 3] = [(0, 18454), (1, 28850), (9999, 41833)];
const TOTAL_SUM: u64 = 264_923_200;

fn repo_mnist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist")
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter()
        .map(|x| ((x + 1.0) * 127.5).round() as u8)
        .collect()
}

fn check_mnist_test(ds: &data::Dataset) {
    assert_eq!(ds.len(), 10000);
    assert_eq!(ds.images.dims(), &[10000, 1, 28, 28]);
    let b = bytes_of(&ds.images);
    for (i, s) in PIXEL_SUMS {
        let sum: u64 = b[i * 784..(i + 1) * 784].iter().map(|x| *x as u64).sum();
        assert_eq!(sum, s, "image {i}");
    }
    assert_eq!(b.iter().map(|x| *x as u64).sum::<u64>(), TOTAL_SUM);
    let l: Vec<u32> = ds.labels.as_ref().unwrap().to_vec1().unwrap();
    assert_eq!(&l[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert_eq!(l[9999], 6);
    assert_eq!(ds.label_histogram().unwrap().unwrap(), MNIST_TEST_HISTOGRAM);
    let v: Vec<f32> = ds.images.flatten_all().unwrap().to_vec1().unwrap();
    let (lo, hi) = v
        .iter()
        .fold((1f32, -1f32), |(a, b), x| (a.min(*x), b.max(*x)));
    assert_eq!((lo, hi), (-1.0, 1.0));
}

fn cfg(dataset: &str, dir: &Path, split: Split) -> DataConfig {
    DataConfig {
        dataset: dataset.into(),
        data_dir: dir.to_path_buf(),
        split,
        ..DataConfig::default()
    }
}

#[test]
fn bundled_digits_match_known_values() {
    let l = data::mnist::load_bundled().unwrap();
    let ds = data::Dataset::from_loaded(l, "mnist".into(), false, 0).unwrap();
    check_mnist_test(&ds);
}

#[test]
fn local_idx_gzip_and_plain() {
    // gzip, as shipped, found under <data_dir>/mnist.
    let ds = data::load(&cfg("mnist", repo_mnist().parent().unwrap(), Split::Test)).unwrap();
    assert!(
        ds.source.ends_with("t10k-images-idx3-ubyte.gz"),
        "{}",
        ds.source
    );
    check_mnist_test(&ds);
    // Plain copies straight in --data-dir.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let gz = std::fs::read(repo_mnist().join(format!("{f}.gz"))).unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
        std::fs::write(tmp.path().join(f), plain).unwrap();
    }
    let ds = data::load(&cfg("MNIST", tmp.path(), Split::Test)).unwrap();
    assert!(
        ds.source.ends_with("t10k-images-idx3-ubyte"),
        "{}",
        ds.source
    );
    check_mnist_test(&ds);
    // --limit keeps the first images.
    let mut c = cfg("mnist", tmp.path(), Split::Test);
    c.limit = Some(10);
    let ds = data::load(&c).unwrap();
    assert_eq!(ds.images.dims(), &[10, 1, 28, 28]);
    assert_eq!(
        ds.label_histogram().unwrap().unwrap().iter().sum::<usize>(),
        10
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Load `mnist` test from a data dir holding one (bad) image file; return the error line.
fn idx_error(image_file: &str, bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("mnist").join(image_file), bytes);
    let e = data::load(&cfg("mnist", tmp.path(), Split::Test))
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.contains(image_file), "names the file: {e}");
    e
}

#[test]
fn corrupt_idx_files_are_one_line_errors() {
    let good = data::idx::encode(&[2, 28, 28], &[7u8; 2 * 784]);
    let mut magic = good.clone();
    magic[2] = 0x0d; // float type
    let e = idx_error("t10k-images-idx3-ubyte", &magic);
    assert!(e.contains("element type 0x0d"), "{e}");
    let mut magic = good.clone();
    magic[0] = 0x50;
    assert!(idx_error("t10k-images-idx3-ubyte", &magic).contains("wrong magic number"));
    let e = idx_error("t10k-images-idx3-ubyte", &good[..good.len() - 100]);
    assert!(e.contains("short data") && e.contains("1468"), "{e}");
    let z = gz(&good);
    let e = idx_error("t10k-images-idx3-ubyte.gz", &z[..z.len() / 2]);
    assert!(e.contains("bad gzip data"), "{e}");
    let e = idx_error(
        "t10k-images-idx3-ubyte",
        &data::idx::encode(&[784], &[0; 784]),
    );
    assert!(e.contains("3 dimensions"), "{e}");
    assert!(idx_error("t10k-images-idx3-ubyte", &[0, 0]).contains("too short"));
    // Labels that do not match the image count.
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("t10k-images-idx3-ubyte"), &good);
    write(
        &tmp.path().join("t10k-labels-idx1-ubyte"),
        &data::idx::encode(&[3], &[1, 2, 3]),
    );
    let e = data::load(&cfg("mnist", tmp.path(), Split::Test))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 labels for 2 images"), "{e}");
    // A good tiny file loads, labels optional.
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("mnist/t10k-images-idx3-ubyte.gz"),
        &gz(&good),
    );
    let ds = data::load(&cfg("mnist", tmp.path(), Split::Test)).unwrap();
    assert_eq!(ds.images.dims(), &[2, 1, 28, 28]);
    assert!(ds.labels.is_none());
}

#[test]
fn unknown_dataset_names_the_choices() {
    let e = data::load(&cfg("imagenet", Path::new("data"), Split::Train)).unwrap_err();
    assert!(e.is_usage());
    let e = e.to_string();
    assert!(
        e.contains("unknown dataset 'imagenet'") && e.contains("fashion-mnist"),
        "{e}"
    );
    let e = data::DatasetKind::parse(file!()).unwrap_err().to_string();
    assert!(e.contains("is a file"), "{e}");
    assert_eq!(
        data::DatasetKind::parse("Fashion_MNIST").unwrap(),
        data::DatasetKind::FashionMnist
    );
    assert!("valid".parse::<Split>().is_err());
}

#[test]
fn cifar10_binary_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar10/cifar-10-batches-bin");
    // Two records per train batch file; record r of file f has label (f + r) % 10 and
    // pixel bytes (k * 1024 + i + f) % 256.
    for f in 1..=5 {
        let mut b = Vec::new();
        for r in 0..2 {
            b.push(((f + r) % 10) as u8);
            b.extend((0..3072).map(|i| ((i + f * 7 + r) % 256) as u8));
        }
        write(&dir.join(format!("data_batch_{f}.bin")), &b);
    }
    let ds = data::load(&cfg("cifar10", tmp.path(), Split::Train)).unwrap();
    assert_eq!(ds.images.dims(), &[10, 3, 32, 32]);
    assert!(ds.hflip);
    let l: Vec<u32> = ds.labels.as_ref().unwrap().to_vec1().unwrap();
    assert_eq!(l, vec![1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    let b = bytes_of(&ds.images);
    // Image 3 = file 2, record 1; its pixel (k=1, y=2, x=5) is byte 1024 + 69.
    let i = 1024 + 2 * 32 + 5;
    assert_eq!(b[3 * 3072 + i], ((i + 2 * 7 + 1) % 256) as u8);
    // Bad label and ragged length.
    write(&dir.join("test_batch.bin"), &[0u8; 3073 + 5]);
    let e = data::load(&cfg("cifar10", tmp.path(), Split::Test))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a whole number of CIFAR-10 records"), "{e}");
    let mut rec = vec![0u8; 3073];
    rec[0] = 12;
    write(&dir.join("test_batch.bin"), &rec);
    let e = data::load(&cfg("cifar10", tmp.path(), Split::Test))
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 12"), "{e}");
}

fn save(img: image::DynamicImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

#[test]
fn folder_of_images_gray_rgb_sizes_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Uniform images, so resizing keeps the value exactly.
    save(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            40,
            20,
            image::Rgb([255, 0, 51]),
        )),
        &root.join("a.png"),
    );
    save(
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(16, 16, image::Luma([102]))),
        &root.join("sub/deeper/b.PNG"),
    );
    save(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            50,
            70,
            image::Rgb([0, 255, 0]),
        )),
        &root.join("sub/c.jpg"),
    );
    write(&root.join("sub/broken.png"), b"\x89PNG not really");
    write(&root.join("notes.txt"), b"ignored");
    let mut c = cfg(root.to_str().unwrap(), Path::new("data"), Split::Train);
    c.sample_size = 8;
    let ds = data::load(&c).unwrap();
    assert_eq!(ds.images.dims(), &[3, 3, 8, 8]);
    assert_eq!(ds.skipped, 1);
    assert!(ds.hflip && ds.labels.is_none());
    let b = bytes_of(&ds.images);
    // Sorted order: a.png, sub/c.jpg, sub/deeper/b.PNG.
    assert_eq!((b[0], b[64], b[128]), (255, 0, 51));
    let jpg = &b[192..192 + 192];
    assert!(
        jpg[0] < 8 && jpg[64] > 247 && jpg[128] < 8,
        "jpeg green: {:?}",
        &jpg[..3]
    );
    assert_eq!((b[384], b[384 + 64], b[384 + 128]), (102, 102, 102));
    // Gray: one channel, luma of the colours.
    c.in_channels = 1;
    c.sample_size = 5;
    let ds = data::load(&c).unwrap();
    assert_eq!(ds.images.dims(), &[3, 1, 5, 5]);
    assert_eq!(bytes_of(&ds.images)[50], 102);
    // Bad channel count, empty folder, folder of only broken files.
    c.in_channels = 2;
    assert!(data::load(&c).unwrap_err().is_usage());
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("nested")).unwrap();
    let e = data::load(&cfg(
        empty.path().to_str().unwrap(),
        Path::new("data"),
        Split::Train,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("no PNG or JPEG images found"), "{e}");
    write(&empty.path().join("x.jpg"), b"nope");
    let e = data::load(&cfg(
        empty.path().to_str().unwrap(),
        Path::new("data"),
        Split::Train,
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("none of the 1 image files could be decoded"),
        "{e}"
    );
}
