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
