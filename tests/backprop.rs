//! The vendored candle-core's backward (vendor/README.md: first gradients stored as is instead
//! of zeros + add; no gradients for constants; vectorised scalar-on-the-left broadcasts)
//! against closed-form gradients: tensors used several times, broadcasts, reductions, views,
//! matmuls and constants on either side, where accumulation and aliasing could go wrong.
use candle_core::{Device, Tensor, Var, D};

fn close(a: &Tensor, b: &Tensor) {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn accumulated_and_broadcast_gradients_match_closed_forms() {
    let dev = Device::Cpu;
    let xs: Vec<f32> = (0..12).map(|i| 0.3 * i as f32 - 1.5).collect();
    let x = Var::from_vec(xs, (3, 4), &dev).unwrap();
    let b = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], 4, &dev).unwrap();
    let (xt, bt) = (x.as_tensor(), b.as_tensor());
    // f = sum(x*x + 3x + exp(x)) + sum((x + b) * x) + sum(x^T)
    let f1 = ((xt * xt).unwrap() + (xt * 3.0).unwrap() + xt.exp().unwrap()).unwrap();
    let f2 = (xt.broadcast_add(bt).unwrap() * xt).unwrap();
    let f3 = xt.t().unwrap().sum_all().unwrap();
    let f = (f1.sum_all().unwrap() + f2.sum_all().unwrap() + f3).unwrap();
    let g = f.backward().unwrap();
    // df/dx = 2x + 3 + e^x + (2x + b) + 1; df/db = sum over rows of x.
    let want_x = ((xt * 4.0).unwrap() + 4.0).unwrap() + xt.exp().unwrap();
    let want_x = want_x.unwrap().broadcast_add(bt).unwrap();
    close(g.get(xt).unwrap(), &want_x);
    close(g.get(bt).unwrap(), &xt.sum(0).unwrap());
}

#[test]
fn matmul_and_mean_gradients_match_closed_forms() {
    let dev = Device::Cpu;
    let a = Var::from_vec((0..6).map(|i| i as f32 * 0.1).collect(), (2, 3), &dev).unwrap();
    let w = Var::from_vec(
        (0..12).map(|i| 1.0 - i as f32 * 0.2).collect(),
        (4, 3),
        &dev,
    )
    .unwrap();
    let (at, wt) = (a.as_tensor(), w.as_tensor());
    // f = mean over rows of sum_j (a w^T)_ij, used twice (f + f).
    let y = at.matmul(&wt.t().unwrap()).unwrap();
    let m = y.sum(D::Minus1).unwrap().mean_all().unwrap();
    let f = (&m + &m).unwrap();
    let g = f.backward().unwrap();
    // df/da_ik = 2/2 * sum_j w_jk; df/dw_jk = 2/2 * sum_i a_ik.
    let want_a = wt.sum_keepdim(0).unwrap().broadcast_as((2, 3)).unwrap();
    let want_w = at.sum_keepdim(0).unwrap().broadcast_as((4, 3)).unwrap();
    close(g.get(at).unwrap(), &want_a);
    close(g.get(wt).unwrap(), &want_w);
}

#[test]
fn constants_get_no_gradient_and_variables_the_right_one() {
    let dev = Device::Cpu;
    // Above Candle's parallel threshold too, so both binary-map paths run.
    for n in [7usize, 300_001] {
        let xs: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 0.05).collect();
        let cs: Vec<f32> = (0..n).map(|i| 1.0 + (i % 13) as f32 * 0.25).collect();
        let x = Var::from_vec(xs, n, &dev).unwrap();
        let c = Tensor::from_vec(cs, n, &dev).unwrap();
        let xt = x.as_tensor();
        // f = sum(x * c) + sum(c - x) + sum(x / c) + sum(c * x)
        let f = ((xt * &c).unwrap().sum_all().unwrap()
            + (&c - xt).unwrap().sum_all().unwrap()
            + (xt / &c).unwrap().sum_all().unwrap()
            + (&c * xt).unwrap().sum_all().unwrap())
        .unwrap();
        let g = f.backward().unwrap();
        // df/dx = c - 1 + 1/c + c.
        let want = (((&c * 2.0).unwrap() - 1.0).unwrap() + c.recip().unwrap()).unwrap();
        close(g.get(xt).unwrap(), &want);
        assert!(g.get(&c).is_none(), "a constant got a gradient");
        // A broadcast scalar on the left of a contiguous tensor (the sum's backward above
        // produces these): s - c and s / c elementwise.
        let s = Tensor::new(3f32, &dev).unwrap().broadcast_as(n).unwrap();
        let d: Vec<f32> = (&s - &c).unwrap().to_vec1().unwrap();
        let q: Vec<f32> = (&s / &c).unwrap().to_vec1().unwrap();
        let cv: Vec<f32> = c.to_vec1().unwrap();
        for ((d, q), c) in d.iter().zip(&q).zip(&cv) {
            assert_eq!(*d, 3.0 - c);
            assert_eq!(*q, 3.0 / c);
        }
    }
}

/// dx of `x.conv2d(w, p, s, d, 1)` by its definition: every output pixel's gradient spread back
/// over the input pixels its window read.
fn conv_dx_by_definition(
    dy: &[f32],
    w: &[f32],
    (n, ci, h, wd): (usize, usize, usize, usize),
    (co, k): (usize, usize),
    (p, s, d): (usize, usize, usize),
) -> Vec<f32> {
    let (oh, ow) = (
        (h + 2 * p - d * (k - 1) - 1) / s + 1,
        (wd + 2 * p - d * (k - 1) - 1) / s + 1,
    );
    let mut dx = vec![0f64; n * ci * h * wd];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((b * co + o) * oh + oy) * ow + ox] as f64;
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (oy * s + ky * d, ox * s + kx * d);
                                if iy < p || ix < p || iy - p >= h || ix - p >= wd {
                                    continue;
                                }
                                let wv = w[((o * ci + c) * k + ky) * k + kx] as f64;
                                dx[((b * ci + c) * h + iy - p) * wd + ix - p] += g * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

#[test]
fn conv2d_input_gradient_matches_its_definition() {
    // diffuse patch (vendor/README.md): conv2d's input gradient is a conv2d of the flipped
    // kernel over the zero-dilated gradient. Strides 1 and 2, odd and even sizes (the trailing
    // row a stride-2 window never reads), 1x1 to 5x5 kernels, and the conv_transpose2d fallback
    // (dilation 2).
    let dev = Device::Cpu;
    for (k, p, s, d, h, wd) in [
        (3, 1, 1, 1, 8, 8),
        (3, 1, 2, 1, 8, 8),
        (3, 1, 2, 1, 7, 9),
        (1, 0, 1, 1, 5, 4),
        (1, 0, 2, 1, 3, 5),
        (3, 0, 2, 1, 9, 8),
        (3, 2, 1, 1, 6, 5),
        (5, 2, 1, 1, 6, 6),
        (3, 1, 1, 2, 7, 7),
    ] {
        let (n, ci, co) = (2, 3, 4);
        let xs: Vec<f32> = (0..n * ci * h * wd)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 9.0)
            .collect();
        let ws: Vec<f32> = (0..co * ci * k * k)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let x = Var::from_vec(xs, (n, ci, h, wd), &dev).unwrap();
        let w = Tensor::from_vec(ws.clone(), (co, ci, k, k), &dev).unwrap();
        let y = x.as_tensor().conv2d(&w, p, s, d, 1).unwrap();
        let gys: Vec<f32> = (0..y.elem_count())
            .map(|i| ((i * 3 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let gy = Tensor::from_vec(gys.clone(), y.dims(), &dev).unwrap();
        let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let got = grads.get(x.as_tensor()).unwrap();
        assert_eq!(got.dims(), [n, ci, h, wd], "k{k} p{p} s{s} d{d} {h}x{wd}");
        let want = conv_dx_by_definition(&gys, &ws, (n, ci, h, wd), (co, k), (p, s, d));
        let want = Tensor::from_vec(want, (n, ci, h, wd), &dev).unwrap();
        close(got, &want);
        // The patched formula itself, not the fallback, where it applies.
        let direct =
            candle_core::backprop::conv2d_input_grad(&gy, &w, &[n, ci, h, wd], p, s, d).unwrap();
        match direct {
            Some(g) => close(&g, &want),
            None => assert_eq!(d, 2, "k{k} p{p} s{s}: the conv2d formula should apply"),
        }
    }
}
