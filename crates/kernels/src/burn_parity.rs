//! cae's convolution kernels against Burn's own operations on the Flex backend: outputs and
//! every gradient (input, weight, bias), for both layer kinds, both strides and odd shapes.
//! The fidelity test checks the whole model against PyTorch; this one checks the kernels
//! where PyTorch has no fixture, and keeps Burn's path (used on every other backend) honest.

use crate::{self as kernels, Kernels, Layer};
use burn::tensor::{Device, Distribution, Tensor};

struct Case {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    stride: usize,
    transposed: bool,
    relu: bool,
}

/// Held while a test draws its inputs from the Flex device's random generator: each test
/// seeds it and compares two runs that must draw the same values, which another test drawing
/// at the same time (tests run on parallel threads) would change.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Both kernels' results for one seed, drawn under [`DEVICE_RNG`].
fn both<T>(run: impl Fn(Kernels) -> T) -> (T, T) {
    let _drawing = DEVICE_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    (run(Kernels::Cae), run(Kernels::Burn))
}

fn max_relative(a: Tensor<1>, b: Tensor<1>) -> f32 {
    let scale: f32 = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
    (a - b).abs().max().into_scalar::<f32>() / scale
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// Output and gradients of `sum(output * probe)` with the chosen kernels.
fn run(case: &Case, kernels: Kernels, seed: u64) -> Vec<Tensor<1>> {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let uniform = Distribution::Uniform(-1.0, 1.0);
    let x = Tensor::<4>::random(
        [case.batch, case.in_channels, case.height, case.width],
        uniform,
        &device,
    )
    .require_grad();
    let weight_shape = if case.transposed {
        [case.in_channels, case.out_channels, 3, 3]
    } else {
        [case.out_channels, case.in_channels, 3, 3]
    };
    let weight = Tensor::<4>::random(weight_shape, uniform, &device).require_grad();
    let bias = Tensor::<1>::random([case.out_channels], uniform, &device).require_grad();
    let layer = if case.transposed {
        Layer::Transposed
    } else {
        Layer::Conv
    };
    let out = kernels::layer3x3(
        layer,
        kernels,
        x.clone(),
        weight.clone(),
        bias.clone(),
        case.stride,
        case.relu,
    );
    let probe = Tensor::<4>::random(out.dims(), uniform, &device);
    let grads = (out.clone() * probe).sum().backward();
    vec![
        flat(out.inner()),
        flat(x.grad(&grads).expect("x grad")),
        flat(weight.grad(&grads).expect("weight grad")),
        flat(bias.grad(&grads).expect("bias grad")),
    ]
}

#[test]
fn cae_kernels_match_burn_forward_and_backward() {
    let mut cases = Vec::new();
    for transposed in [false, true] {
        for stride in [1, 2] {
            for (batch, in_channels, out_channels, height, width) in [
                (3, 3, 16, 9, 7),
                (5, 16, 8, 8, 8),
                (1, 2, 3, 1, 1),
                (17, 32, 64, 4, 6),
                (2, 16, 16, 32, 32),
            ] {
                for relu in [false, true] {
                    cases.push(Case {
                        relu,
                        batch,
                        in_channels,
                        out_channels,
                        height,
                        width,
                        stride,
                        transposed,
                    });
                }
            }
        }
    }
    for (i, case) in cases.iter().enumerate() {
        // Burn's conv_transpose2d output for odd inputs is `stride * size`, as in the model.
        let (ours, burns) = both(|kernels| run(case, kernels, i as u64));
        for (name, (a, b)) in ["output", "x grad", "weight grad", "bias grad"]
            .iter()
            .zip(ours.into_iter().zip(burns))
        {
            assert_eq!(a.dims(), b.dims(), "case {i} {name} shape");
            let diff = max_relative(a, b);
            assert!(
                diff < 1e-5,
                "case {i} ({}transposed, stride {}, relu {}): {name} differs by {diff}",
                if case.transposed { "" } else { "not " },
                case.stride,
                case.relu
            );
        }
    }
}

/// Output and gradients of `sum(output * probe)` through a fully connected layer with the
/// chosen kernels; without `x_tracked` the input takes no gradient (the weight and bias
/// only, as for a layer right after the data).
fn run_dense(
    (batch, inputs, outputs): (usize, usize, usize),
    relu: bool,
    x_tracked: bool,
    kernels: Kernels,
    seed: u64,
) -> Vec<Tensor<1>> {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let uniform = Distribution::Uniform(-1.0, 1.0);
    let mut x = Tensor::<2>::random([batch, inputs], uniform, &device);
    if x_tracked {
        x = x.require_grad();
    }
    let weight = Tensor::<2>::random([inputs, outputs], uniform, &device).require_grad();
    let bias = Tensor::<1>::random([outputs], uniform, &device).require_grad();
    let out = kernels::dense_with(kernels, x.clone(), weight.clone(), bias.clone(), relu);
    let probe = Tensor::<2>::random(out.dims(), uniform, &device);
    let grads = (out.clone() * probe).sum().backward();
    let mut results = vec![
        flat(out.inner()),
        flat(weight.grad(&grads).expect("weight grad")),
        flat(bias.grad(&grads).expect("bias grad")),
    ];
    if x_tracked {
        results.push(flat(x.grad(&grads).expect("x grad")));
    } else {
        assert!(
            x.grad(&grads).is_none(),
            "an untracked input got a gradient"
        );
    }
    results
}

/// The fully connected layers give Burn's `linear` (and ReLU) outputs and gradients bit for
/// bit: the same products in the same order, the bias and the gate fused. The `(64, 4096,
/// 200)` forward pass and the `(64, 200, 4096)` and `(48, 1000, 300)` input gradients run
/// column by column (`dense::product`).
#[test]
fn dense_layers_match_burn_bit_for_bit() {
    let mut case = 0;
    let sizes = [
        (64, 4096, 200),
        (64, 200, 4096),
        (48, 1000, 300),
        (7, 33, 5),
        (1, 1, 1),
        (3, 200, 4096),
    ];
    for sizes in sizes {
        for relu in [false, true] {
            for x_tracked in [false, true] {
                let (ours, burns) =
                    both(|kernels| run_dense(sizes, relu, x_tracked, kernels, case));
                for (name, (a, b)) in ["output", "weight grad", "bias grad", "x grad"]
                    .iter()
                    .zip(ours.into_iter().zip(burns))
                {
                    let what = format!("{sizes:?}, relu {relu}, x tracked {x_tracked}: {name}");
                    assert_eq!(a.dims(), b.dims(), "{what} shape");
                    let (a, b) = (a.into_data(), b.into_data());
                    assert_eq!(
                        a.as_slice::<f32>().unwrap(),
                        b.as_slice::<f32>().unwrap(),
                        "{what}"
                    );
                }
                case += 1;
            }
        }
    }
}

/// The same comparison at every other level this CPU supports (the portable path included):
/// this test binary runs that test again with `CAE_SIMD` set.
#[test]
fn every_level_matches_burn_too() {
    crate::simd::rerun_at_every_other_level(&[
        "burn_parity::cae_kernels_match_burn_forward_and_backward",
        "burn_parity::dense_layers_match_burn_bit_for_bit",
    ]);
}

#[test]
fn flex_devices_get_cae_kernels_unless_asked_for_burn() {
    let expected = match std::env::var("CAE_KERNELS").as_deref() {
        Ok("burn") => Kernels::Burn,
        _ => Kernels::Cae,
    };
    assert_eq!(kernels::kernels_for(&Device::flex()), expected);
    assert_eq!(kernels::kernels_for(&Device::flex().autodiff()), expected);
}
