//! The fast CPU kernels against the Candle expressions they replace (src/kernels/reference.rs):
//! forward and every gradient, on seeded random inputs of the UNet's shapes and odd ones.
//! Error is max|ours - candle| / max|candle| per tensor (elementwise ratios blow up at zeros).
use candle_core::{Device, Tensor, Var};
use diffuse::core::rng::NoiseRng;
use diffuse::kernels::{self, reference};

const TOL: f32 = 1e-4;

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Run `f` on fresh Vars of `inputs` with upstream gradient `g` (loss = sum(f(..) * g));
/// returns the output and the gradient of every input.
fn fwd_bwd(
    inputs: &[Tensor],
    g_seed: u64,
    f: impl Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let g = NoiseRng::new(g_seed)
        .randn(y.shape(), &Device::Cpu)
        .unwrap();
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = ts.iter().map(|t| grads.get(t).unwrap().clone()).collect();
    (y, gs)
}

fn check(
    label: &str,
    inputs: &[Tensor],
    ours: impl Fn(&[Tensor]) -> Tensor,
    theirs: impl Fn(&[Tensor]) -> Tensor,
) {
    let (ya, ga) = fwd_bwd(inputs, 99, ours);
    let (yb, gb) = fwd_bwd(inputs, 99, theirs);
    let e = rel_err(&ya, &yb);
    eprintln!("{label}: forward {e:.2e}");
    assert!(e < TOL, "{label}: forward rel err {e}");
    for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
        let e = rel_err(a, b);
        eprintln!("{label}: grad {i} {e:.2e}");
        assert!(e < TOL, "{label}: grad of input {i} rel err {e}");
    }
}

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    NoiseRng::new(seed)
        .randn(shape.to_vec(), &Device::Cpu)
        .unwrap()
}

#[test]
fn conv2d_matches_candle_forward_and_both_gradients() {
    // (x shape, co, k, stride, pad, bias)
    type Case = ([usize; 4], usize, usize, usize, usize, bool);
    let cases: &[Case] = &[
        ([64, 32, 28, 28], 32, 3, 1, 1, true),
        ([64, 64, 14, 14], 64, 3, 1, 1, false),
        ([8, 32, 28, 28], 64, 3, 2, 1, true),
        ([64, 1, 28, 28], 32, 3, 1, 1, true),
        ([3, 5, 7, 7], 6, 3, 2, 1, false),
        ([2, 12, 9, 7], 10, 3, 1, 0, true),
        ([2, 13, 7, 7], 7, 1, 1, 0, true),
        ([2, 6, 7, 9], 5, 1, 2, 0, false),
        ([2, 3, 8, 8], 4, 3, 2, 0, false),
        ([1, 3, 7, 7], 3, 3, 1, 1, false),
        ([2, 4, 5, 11], 3, 3, 2, 1, false),
        // Small images are grouped several per gemm; a batch that the group size does not
        // divide leaves a short last group.
        ([64, 64, 7, 7], 64, 3, 1, 1, true),
        ([21, 6, 7, 7], 5, 3, 2, 1, false),
        ([18, 13, 7, 7], 7, 1, 1, 0, true),
        // The direct kernels (stride 1, same padding, 8-channel tiles): odd channel counts,
        // widths that are not a tile, an odd batch, 1x1, 1x1 images.
        ([3, 13, 5, 11], 16, 3, 1, 1, true),
        ([5, 16, 9, 9], 8, 3, 1, 1, false),
        ([3, 5, 6, 3], 8, 1, 1, 0, true),
        ([2, 8, 1, 1], 8, 3, 1, 1, true),
        ([4, 96, 28, 28], 32, 3, 1, 1, true),
        ([3, 96, 14, 14], 64, 1, 1, 0, true),
        // Channel counts padded to whole tiles: the 1-channel output conv, 6 and 13 channels.
        ([4, 32, 28, 28], 1, 3, 1, 1, true),
        ([3, 13, 5, 11], 6, 3, 1, 1, true),
    ];
    for (i, &(xs, co, k, s, p, bias)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        let x = randn(seed, &xs);
        let w = (randn(seed + 1, &[co, xs[1], k, k]) * 0.2).unwrap();
        let b = randn(seed + 2, &[co]);
        let label = format!("conv {xs:?}->{co} k{k} s{s} p{p} bias={bias}");
        let mut inputs = vec![x, w];
        if bias {
            inputs.push(b);
        }
        check(
            &label,
            &inputs,
            |t| kernels::conv2d(&t[0], &t[1], t.get(2), s, p).unwrap(),
            |t| reference::conv2d(&t[0], &t[1], t.get(2), s, p).unwrap(),
        );
    }
}

#[test]
fn conv2d_per_image_bias_matches_candle() {
    // The resnet's conv1 takes its bias plus the time embedding as one [n, co] bias.
    for (i, &(xs, co)) in [([64, 32, 14, 14], 64), ([5, 3, 7, 7], 6)]
        .iter()
        .enumerate()
    {
        let seed = 500 + 10 * i as u64;
        let x = randn(seed, &xs);
        let w = (randn(seed + 1, &[co, xs[1], 3, 3]) * 0.2).unwrap();
        let b = randn(seed + 2, &[xs[0], co]);
        check(
            &format!("conv {xs:?}->{co} per-image bias"),
            &[x, w, b],
            |t| kernels::conv2d(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap(),
            |t| reference::conv2d(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap(),
        );
    }
    let (x, w) = (randn(1, &[2, 3, 5, 5]), randn(2, &[4, 3, 3, 3]));
    let e = kernels::conv2d(&x, &w, Some(&randn(3, &[3, 4])), 1, 1).unwrap_err();
    assert!(e.to_string().contains("bias of shape [3, 4]"), "{e}");
}

#[test]
fn linear_matches_candle_forward_and_all_gradients() {
    // (input shape, out features, bias): attention projections on [B, N, C], the time
    // embedding on [B, C], and odd sizes (rows not a multiple of the block).
    let cases: &[(Vec<usize>, usize, bool)] = &[
        (vec![64, 196, 64], 64, true),
        (vec![64, 128], 128, true),
        (vec![3, 7, 5], 9, true),
        (vec![300, 17], 3, true),
        (vec![4, 6], 5, false),
    ];
    for (i, (xs, co, bias)) in cases.iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        let ci = *xs.last().unwrap();
        let mut inputs = vec![randn(seed, xs), randn(seed + 1, &[*co, ci])];
        if *bias {
            inputs.push(randn(seed + 2, &[*co]));
        }
        check(
            &format!("linear {xs:?}->{co} bias={bias}"),
            &inputs,
            |t| kernels::linear(&t[0], &t[1], t.get(2)).unwrap(),
            |t| reference::linear(&t[0], &t[1], t.get(2)).unwrap(),
        );
    }
}

#[test]
fn conv2d_accepts_non_contiguous_input() {
    let x = randn(1, &[2, 4, 6, 6]).transpose(2, 3).unwrap();
    let w = randn(2, &[3, 4, 3, 3]);
    let a = kernels::conv2d(&x, &w, None, 1, 1).unwrap();
    let b = reference::conv2d(&x, &w, None, 1, 1).unwrap();
    assert!(rel_err(&a, &b) < TOL);
}

#[test]
fn group_norm_matches_candle_forward_and_all_gradients() {
    // (x shape, groups, input offset: a large mean tests the variance's cancellation)
    let cases: &[(Vec<usize>, usize, f64)] = &[
        (vec![64, 64, 14, 14], 8, 0.0),
        (vec![64, 32, 28, 28], 8, 0.0),
        (vec![64, 64, 7, 7], 8, 3.0),
        (vec![3, 12, 7, 7], 4, 0.0),
        (vec![2, 6, 5], 3, -2.0),
        (vec![2, 10, 3, 5], 5, 0.0),
        (vec![1, 7, 1, 1], 1, 0.0),
    ];
    for (i, (xs, groups, offset)) in cases.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = (randn(seed, xs) + *offset).unwrap();
        let gamma = (randn(seed + 1, &[xs[1]]) + 1.0).unwrap();
        let beta = randn(seed + 2, &[xs[1]]);
        let g = *groups;
        check(
            &format!("group_norm {xs:?} g{g} offset {offset}"),
            &[x.clone(), gamma.clone(), beta.clone()],
            |t| kernels::group_norm(&t[0], g, &t[1], &t[2], 1e-5).unwrap(),
            |t| reference::group_norm(&t[0], g, &t[1], &t[2], 1e-5).unwrap(),
        );
        check(
            &format!("group_norm_silu {xs:?} g{g} offset {offset}"),
            &[x, gamma, beta],
            |t| kernels::group_norm_silu(&t[0], g, &t[1], &t[2], 1e-5).unwrap(),
            |t| reference::group_norm_silu(&t[0], g, &t[1], &t[2], 1e-5).unwrap(),
        );
    }
}

#[test]
fn silu_matches_candle_forward_and_gradient() {
    for (i, xs) in [vec![64, 64, 14, 14], vec![3, 5, 7, 7], vec![1]]
        .iter()
        .enumerate()
    {
        // x scaled by 8 reaches the saturated tails on both sides.
        let x = (randn(200 + i as u64, xs) * 8.0).unwrap();
        check(
            &format!("silu {xs:?}"),
            &[x],
            |t| kernels::silu(&t[0]).unwrap(),
            |t| reference::silu(&t[0]).unwrap(),
        );
    }
}

#[test]
fn softmax_matches_candle_forward_and_gradient() {
    for (i, xs) in [
        vec![8, 196, 196],
        vec![3, 5, 7],
        vec![4, 1],
        vec![2, 49, 49],
    ]
    .iter()
    .enumerate()
    {
        // Scaled by 6: rows far from uniform, max subtraction matters.
        let x = (randn(300 + i as u64, xs) * 6.0).unwrap();
        check(
            &format!("softmax {xs:?}"),
            &[x],
            |t| kernels::softmax_last_dim(&t[0]).unwrap(),
            |t| reference::softmax_last_dim(&t[0]).unwrap(),
        );
    }
}

/// softmax(scale * x) with the scale folded into our op, against Candle's affine op and softmax.
#[test]
fn scaled_softmax_matches_candle_forward_and_gradient() {
    for (i, (xs, scale)) in [
        (vec![8, 64, 64], 0.125),
        (vec![3, 5, 37], 1.0 / 16.0),
        (vec![2, 16, 16], 3.0),
    ]
    .iter()
    .enumerate()
    {
        let x = (randn(350 + i as u64, xs) * 4.0).unwrap();
        check(
            &format!("softmax of {scale} x {xs:?}"),
            &[x],
            |t| kernels::scaled_softmax_last_dim(&t[0], *scale).unwrap(),
            |t| reference::scaled_softmax_last_dim(&t[0], *scale).unwrap(),
        );
    }
}

#[test]
fn attention_with_fused_softmax_matches_candle() {
    let (b, n, d) = (16, 196, 64);
    let q = randn(400, &[b, n, d]);
    let k = randn(401, &[b, n, d]);
    let v = randn(402, &[b, n, d]);
    let scale = 1.0 / (d as f64).sqrt();
    check(
        "attention 16x196x64",
        &[q, k, v],
        |t| {
            reference::attention_with(&t[0], &t[1], &t[2], scale, kernels::softmax_last_dim)
                .unwrap()
        },
        |t| reference::attention(&t[0], &t[1], &t[2], scale).unwrap(),
    );
}

#[test]
fn upsample_matches_candle_forward_and_gradient() {
    for (i, xs) in [[64, 64, 7, 7], [2, 3, 5, 9], [1, 17, 1, 1]]
        .iter()
        .enumerate()
    {
        let x = randn(500 + i as u64, xs);
        check(
            &format!("upsample2x {xs:?}"),
            &[x],
            |t| kernels::upsample_nearest2x(&t[0]).unwrap(),
            |t| reference::upsample_nearest2x(&t[0]).unwrap(),
        );
    }
}

#[test]
fn fused_channels_first_attention_matches_candle() {
    // q^T, k^T, v^T [items, d, n]: the UNet's 64 x 64 x 196 and 64 x 64 x 49, and odd sizes.
    for (i, &(b, d, n)) in [(64, 64, 196), (16, 64, 49), (3, 5, 7), (2, 1, 1)]
        .iter()
        .enumerate()
    {
        let seed = 900 + 10 * i as u64;
        let inputs: Vec<Tensor> = (0..3).map(|j| randn(seed + j, &[b, d, n])).collect();
        let scale = 1.0 / (d as f64).sqrt();
        check(
            &format!("attention channels-first {b}x{d}x{n}"),
            &inputs,
            |t| kernels::attention_channels_first(&t[0], &t[1], &t[2], scale).unwrap(),
            |t| reference::attention_channels_first(&t[0], &t[1], &t[2], scale).unwrap(),
        );
    }
}
