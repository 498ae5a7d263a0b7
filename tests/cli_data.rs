//! `diffuse data show` end to end, offline (HF_HUB_OFFLINE=1, empty HF_HOME): grids decoded
//! and checked, and bad inputs give one line and the right exit code.
mod common;
use assert_cmd::Command;
use std::path::Path;

fn diffuse(hf_home: &Path) -> Command {
    let mut c = Command::cargo_bin("diffuse").unwrap();
    c.env_remove("RUST_LOG")
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1");
    c
}

fn fails(home: &Path, args: &[&str]) -> (i32, String) {
    common::one_line_failure(
        diffuse(home).args(args).output().unwrap(),
        &format!("{args:?}"),
    )
}

#[test]
fn show_writes_a_grid_of_bundled_digits() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grid.png");
    let empty = tmp.path().join("nodata");
    std::fs::create_dir(&empty).unwrap();
    let o = diffuse(home.path())
        .args([
            "data",
            "show",
            "--dataset",
            "mnist",
            "-n",
            "16",
            "--seed",
            "3",
        ])
        // No data/ in the working directory: the bundled digits.
        .current_dir(&empty)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(
        s.contains("mnist: 10000 images 1x28x28 from bundled"),
        "{s}"
    );
    let img = image::open(&out).unwrap().to_rgb8();
    // 4x4 tiles of 28 px with 2 px padding = 122 px, upscaled x5 to reach 512.
    assert_eq!(img.dimensions(), (610, 610));
    // Digits are white on black: some bright and many dark pixels, gray (r == g == b).
    let px: Vec<_> = img.pixels().collect();
    assert!(px.iter().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(px.iter().filter(|p| p[0] > 250).count() > 1000);
    // Same seed, same grid; another seed, another grid.
    let again = tmp.path().join("again.png");
    let other = tmp.path().join("other.png");
    for (seed, path) in [("3", &again), ("4", &other)] {
        diffuse(home.path())
            .args(["data", "show", "--num", "16", "--seed", seed])
            .current_dir(&empty)
            .arg("-o")
            .arg(path)
            .assert()
            .success();
    }
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&other).unwrap());
}

#[test]
fn show_a_folder_in_rgb() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("imgs");
    std::fs::create_dir_all(dir.join("x")).unwrap();
    image::RgbImage::from_pixel(30, 20, image::Rgb([200, 10, 10]))
        .save(dir.join("r.png"))
        .unwrap();
    image::RgbImage::from_pixel(9, 9, image::Rgb([10, 10, 200]))
        .save(dir.join("x/b.png"))
        .unwrap();
    let out = tmp.path().join("g.png");
    let o = diffuse(home.path())
        .args(["data", "show", "--size", "16", "--dataset"])
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8(o.stdout)
        .unwrap()
        .contains("2 images 3x16x16"));
    let img = image::open(&out).unwrap().to_rgb8();
    let red = img.pixels().filter(|p| p[0] > 190 && p[2] < 20).count();
    let blue = img.pixels().filter(|p| p[2] > 190 && p[0] < 20).count();
    assert!(red > 100 && blue > 100, "{red} {blue}");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let h = home.path();
    let (code, err) = fails(h, &["data", "show", "--dataset", "imagenet"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown dataset 'imagenet'"), "{err}");
    // Empty folder.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, err) = fails(h, &["data", "show", "--dataset", empty.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no PNG or JPEG images"), "{err}");
    // Corrupt local IDX: wrong magic number, truncated gzip.
    let d = tmp.path().join("d");
    std::fs::create_dir_all(d.join("mnist")).unwrap();
    std::fs::write(
        d.join("mnist/train-images-idx3-ubyte"),
        b"\x12\x34\x08\x03rest",
    )
    .unwrap();
    let (code, err) = fails(h, &["data", "show", "--data-dir", d.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong magic number 0x12340803"), "{err}");
    let gz = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist/t10k-images-idx3-ubyte.gz"),
    )
    .unwrap();
    std::fs::write(
        d.join("mnist/t10k-images-idx3-ubyte.gz"),
        &gz[..gz.len() - 1000],
    )
    .unwrap();
    let (_, err) = fails(
        h,
        &[
            "data",
            "show",
            "--split",
            "test",
            "--data-dir",
            d.to_str().unwrap(),
        ],
    );
    assert!(err.contains("bad gzip data"), "{err}");
    // CIFAR-10 absent everywhere, offline.
    let (code, err) = fails(
        h,
        &[
            "data",
            "show",
            "--dataset",
            "cifar10",
            "--data-dir",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cifar10 not found"), "{err}");
    let (code, _) = fails(h, &["data", "show", "-n", "0"]);
    assert_eq!(code, 2);
    let (code, err) = fails(h, &["data", "show", "--split", "dev"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown split"), "{err}");
}
