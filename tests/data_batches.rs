//! Seeded batches: every epoch is a permutation, epochs differ, flips mirror exactly, and
//! resuming from a serialised state reproduces the exact batch sequence.
use candle_core::Device;
use diffuse::data::{BatchConfig, BatchState, Batches, Dataset, Loaded};

/// N images of 1x2x3 whose pixel (y, x) = id + y * 0.1 + x * 0.01 (id scaled into range),
/// labels = id % 256.
fn toy(n: usize) -> Dataset {
    let mut pixels = Vec::new();
    for i in 0..n {
        for y in 0..2 {
            for x in 0..3 {
                pixels.push(i as f32 / n as f32 + y as f32 * 0.1 + x as f32 * 0.01);
            }
        }
    }
    let l = Loaded {
        dims: (n, 1, 2, 3),
        pixels,
        labels: Some((0..n).map(|i| (i % 256) as u8).collect()),
        source: "toy".into(),
    };
    Dataset::from_loaded(l, "toy".into(), false, 0).unwrap()
}

fn rows(t: &candle_core::Tensor) -> Vec<Vec<f32>> {
    t.flatten_from(1).unwrap().to_vec2().unwrap()
}

/// Which image a (possibly flipped) row is, and whether it was flipped.
fn identify(row: &[f32], n: usize) -> (usize, bool) {
    let id = ((row[0].min(row[2]) - 0.0) * n as f32).round() as usize;
    (id, row[0] > row[2])
}

#[test]
fn epochs_are_permutations_and_differ() {
    let n = 10;
    let ds = toy(n);
    let cfg = BatchConfig {
        batch_size: 4,
        drop_last: false,
        ..BatchConfig::default()
    };
    let mut it = Batches::new(&ds, cfg, 42, &Device::Cpu).unwrap();
    assert_eq!(it.batches_per_epoch(), 3);
    let mut epochs: Vec<Vec<usize>> = vec![vec![]; 3];
    for _ in 0..9 {
        let b = it.next_batch().unwrap();
        let ids: Vec<usize> = rows(&b.images).iter().map(|r| identify(r, n).0).collect();
        let labels: Vec<u32> = b.labels.unwrap().to_vec1().unwrap();
        assert_eq!(ids.iter().map(|i| *i as u32).collect::<Vec<_>>(), labels);
        epochs[b.epoch as usize].extend(ids);
    }
    for e in &epochs {
        let mut s = e.clone();
        s.sort();
        assert_eq!(s, (0..n).collect::<Vec<_>>());
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[0], (0..n).collect::<Vec<_>>());
    // Another seed, another order; drop_last gives equal batches.
    let cfg = BatchConfig {
        batch_size: 4,
        ..BatchConfig::default()
    };
    let mut other = Batches::new(&ds, cfg.clone(), 43, &Device::Cpu).unwrap();
    assert_eq!(other.batches_per_epoch(), 2);
    let first: Vec<usize> = rows(&other.next_batch().unwrap().images)
        .iter()
        .map(|r| identify(r, n).0)
        .collect();
    assert_ne!(first, epochs[0][..4].to_vec());
    other.next_batch().unwrap();
    let b = other.next_batch().unwrap();
    assert_eq!((b.epoch, b.position, b.images.dims()[0]), (1, 0, 4));
    // Unshuffled keeps dataset order.
    let cfg = BatchConfig {
        batch_size: 3,
        shuffle: false,
        ..BatchConfig::default()
    };
    let b = Batches::new(&ds, cfg, 0, &Device::Cpu)
        .unwrap()
        .next_batch()
        .unwrap();
    let ids: Vec<usize> = rows(&b.images).iter().map(|r| identify(r, n).0).collect();
    assert_eq!(ids, vec![0, 1, 2]);
}

#[test]
fn resume_from_saved_state_is_identical() {
    let ds = toy(23);
    let cfg = BatchConfig {
        batch_size: 5,
        hflip: true,
        drop_last: false,
        ..BatchConfig::default()
    };
    let mut full = Batches::new(&ds, cfg.clone(), 7, &Device::Cpu).unwrap();
    let all: Vec<_> = (0..17).map(|_| full.next_batch().unwrap()).collect();
    for cut in [0, 3, 5, 6, 11] {
        let mut it = Batches::new(&ds, cfg.clone(), 7, &Device::Cpu).unwrap();
        for _ in 0..cut {
            it.next_batch().unwrap();
        }
        let saved = serde_json::to_string(&it.state()).unwrap();
        let state: BatchState = serde_json::from_str(&saved).unwrap();
        let mut resumed = Batches::resume(&ds, cfg.clone(), state, &Device::Cpu).unwrap();
        for want in &all[cut..] {
            let got = resumed.next_batch().unwrap();
            assert_eq!((got.epoch, got.position), (want.epoch, want.position));
            assert_eq!(rows(&got.images), rows(&want.images), "cut {cut}");
            let (a, b): (Vec<u32>, Vec<u32>) = (
                got.labels.unwrap().to_vec1().unwrap(),
                want.labels.clone().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b);
        }
    }
    let bad = BatchState {
        seed: 7,
        epoch: 0,
        position: 24,
    };
    let e = Batches::resume(&ds, cfg, bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("past the end"), "{e}");
}

#[test]
fn flips_mirror_rows_about_half_the_time() {
    let n = 400;
    let ds = toy(n);
    let cfg = BatchConfig {
        batch_size: n,
        hflip: true,
        ..BatchConfig::default()
    };
    let b = Batches::new(&ds, cfg, 1, &Device::Cpu)
        .unwrap()
        .next_batch()
        .unwrap();
    let mut flipped = 0;
    for r in rows(&b.images) {
        let (id, f) = identify(&r, n);
        let base = id as f32 / n as f32;
        let want: Vec<f32> = (0..2)
            .flat_map(|y| (0..3).map(move |x| (y, x)))
            .map(|(y, x)| base + y as f32 * 0.1 + (if f { 2 - x } else { x }) as f32 * 0.01)
            .collect();
        assert_eq!(r, want);
        flipped += f as usize;
    }
    // Binomial(400, 1/2): 5 sigma = 50.
    assert!((150..250).contains(&flipped), "{flipped}");
    // Off by default.
    let cfg = BatchConfig {
        batch_size: n,
        ..BatchConfig::default()
    };
    let b = Batches::new(&ds, cfg, 1, &Device::Cpu)
        .unwrap()
        .next_batch()
        .unwrap();
    assert!(rows(&b.images).iter().all(|r| !identify(r, n).1));
    // Bad sizes are usage errors.
    let cfg = BatchConfig {
        batch_size: n + 1,
        ..BatchConfig::default()
    };
    assert!(Batches::new(&ds, cfg, 1, &Device::Cpu)
        .err()
        .unwrap()
        .is_usage());
    let cfg = BatchConfig {
        batch_size: 0,
        ..BatchConfig::default()
    };
    assert!(Batches::new(&ds, cfg, 1, &Device::Cpu)
        .err()
        .unwrap()
        .is_usage());
}
