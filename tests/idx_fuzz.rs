//! Fuzzing the IDX parser: arbitrary and mutated byte strings (plain and gzip) never panic,
//! and whatever parses has consistent shapes. PROPTEST_CASES=N runs more cases (default 64).
use diffuse::data::idx;
use proptest::prelude::*;
use std::io::Write;
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

fn check(bytes: &[u8]) {
    let p = Path::new("fuzz");
    if let Ok((n, h, w, px)) = idx::images_from_bytes(bytes, p) {
        assert_eq!(px.len(), n * h * w);
        assert!(px.iter().all(|x| (-1.0..=1.0).contains(x)));
    }
    if let Ok(l) = idx::labels_from_bytes(bytes, p) {
        let plain = idx::maybe_gunzip(bytes, p).unwrap();
        assert_eq!(l.len(), idx::parse(&plain).unwrap().dims[0]);
    }
    if let Ok(i) = idx::parse(bytes) {
        let total: usize = i.dims.iter().product();
        assert_eq!(i.data.len(), total);
        assert_eq!(bytes.len(), 4 + 4 * i.dims.len() + total);
    }
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A valid IDX file of 1-3 small dimensions.
fn valid_idx() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0usize..6, 1..4).prop_flat_map(|dims| {
        let n: usize = dims.iter().product();
        prop::collection::vec(any::<u8>(), n).prop_map(move |data| idx::encode(&dims, &data))
    })
}

/// Mutations: overwrite bytes, truncate, append.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_idx(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(mut b, edits, cut, mode, tail)| {
            for (i, v) in edits {
                let k = i.index(b.len());
                b[k] = v;
            }
            match mode {
                0 => b.truncate(cut.index(b.len() + 1)),
                1 => b.extend(tail),
                _ => {}
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&b);
        let mut with_header = vec![0, 0, 8, b.first().map_or(1, |x| x % 4)];
        with_header.extend(&b);
        check(&with_header);
    }

    #[test]
    fn mutated_idx_never_panics(b in mutated()) {
        check(&b);
        let z = gz(&b);
        check(&z);
        // Truncated or corrupted gzip streams too.
        check(&z[..z.len() / 2]);
        let mut zc = z.clone();
        let k = zc.len() / 3;
        zc[k] ^= 0x5a;
        check(&zc);
    }

    #[test]
    fn valid_files_round_trip(b in valid_idx()) {
        let i = idx::parse(&b).unwrap();
        prop_assert_eq!(i.data.len(), i.dims.iter().product::<usize>());
        let z = gz(&b);
        prop_assert_eq!(&*idx::maybe_gunzip(&z, Path::new("x")).unwrap(), &b[..]);
    }
}
