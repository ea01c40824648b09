//! One test per patch of the vendored candle-core (vendor/PATCHES.md), each of which
//! fails on candle-core without its patch: `scripts/candle-patches.sh prove` runs each
//! against the patch series up to the patch before (must fail) and up to the patch
//! (must pass). Patch 5's test is in tests/candle_patch_5.rs (it calls a function that
//! only the patched crate has).

use candle_core::{DType, Device, Tensor, Var};

/// Patch 1: the backward of `x @ w` with `w` a constant (a frozen weight) computes and
/// stores no gradient for `w`; `x`'s is the right one. Stock candle-core computes both.
#[test]
fn patch_1_frozen_matmul_sides_get_no_gradient() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::arange(0f32, 6., &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap(),
    )
    .unwrap();
    let w = Tensor::arange(0f32, 12., &dev)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let y = x.as_tensor().matmul(&w).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&w).is_none(), "the constant got a gradient");
    // d(sum(x @ w))/dx = 1 @ w^T: each row is w's row sums.
    let gx = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(gx, vec![vec![6.0, 22.0, 38.0]; 2]);
}

/// Patch 2: a sum over dimensions that are not the last ones adds each run of the
/// trailing reduced dimension on its own, then the runs. Stock candle-core adds element
/// by element into the output, where 2^24 + 1 + 1 rounds back to 2^24 in f32; the run
/// sums 1 + 1 first and gets 2^24 + 2 exactly.
#[test]
fn patch_2_sums_over_inner_dims_add_runs() {
    let big = 16_777_216f32; // 2^24: the f32 spacing above it is 2
                             // [2, 2, 3] summed over (0, 2): per channel, run [2^24, 0, 0] then run [1, 1, 0].
    let x = Tensor::from_vec(
        vec![big, 0., 0., big, 0., 0., 1., 1., 0., 1., 1., 0.],
        (2, 2, 3),
        &Device::Cpu,
    )
    .unwrap();
    let got = x.sum_keepdim((0, 2)).unwrap().flatten_all().unwrap();
    assert_eq!(got.to_vec1::<f32>().unwrap(), vec![big + 2.0; 2]);
}

/// Patch 3: `x * a + b` runs on candle's elementwise pool, on more than one core. Stock
/// candle-core maps it on the calling thread only. Measured as process CPU time over
/// wall time, so it needs two idle cores: run by `scripts/candle-patches.sh prove`.
#[test]
#[ignore = "timing: needs two idle cores (scripts/candle-patches.sh prove runs it)"]
fn patch_3_affine_runs_on_the_elementwise_pool() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cores >= 2, "needs two cores, found {cores}");
    let x = Tensor::ones(8 << 20, DType::F32, &Device::Cpu).unwrap();
    x.affine(2.0, 1.0).unwrap(); // warm-up: the pool's threads start
    let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
    for _ in 0..20 {
        let y = x.affine(2.0, 1.0).unwrap();
        assert_eq!(y.dims(), x.dims());
    }
    let ratio = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        ratio > 1.3,
        "CPU time / wall time = {ratio:.2}: one thread did the work"
    );
}

/// Patch 4: a tensor's first gradient is stored as it is, not added to a tensor of
/// zeros. For `y = x + w`, both sides' gradient is the one tensor `y`'s gradient was;
/// stock candle-core stores a fresh `zeros + grad` for each.
#[test]
fn patch_4_first_gradient_is_stored_not_added_to_zeros() {
    let dev = Device::Cpu;
    let x = Var::new(&[1f32, 2., 3.], &dev).unwrap();
    let w = Var::new(&[4f32, 5., 6.], &dev).unwrap();
    let y = (x.as_tensor() + w.as_tensor()).unwrap();
    let grads = y.backward().unwrap();
    let (gx, gw) = (grads.get(&x).unwrap(), grads.get(&w).unwrap());
    assert_eq!(gx.to_vec1::<f32>().unwrap(), vec![1.0; 3]);
    assert_eq!(
        gx.id(),
        gw.id(),
        "each side got its own copy of the gradient"
    );
}

/// User plus system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}
