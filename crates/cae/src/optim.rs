//! Adam exactly as PyTorch computes it (`torch.optim.Adam`, single-tensor path), with its state
//! keyed by parameter name so checkpoints are readable and survive a rebuild of the model.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::io::weights::torch_name;
use crate::model::Autoencoder;
use cae_kernels::{self as kernels, Kernels};

/// The optimiser settings of a training run (Adam's other constants are PyTorch's, see
/// `AdamConfig`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimiserSettings {
    /// Adam's learning rate (`--lr`), before any `--lr-drop`.
    pub lr: f64,
    /// Training images per Adam step (`--batch-size`); an epoch's last batch may be smaller.
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// PyTorch's 1e-8; Burn's default of 1e-5 visibly stalls this encoder.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The running moments of one parameter, flattened.
#[derive(Clone)]
pub(crate) struct Moments {
    pub exp_avg: Tensor<1>,
    pub exp_avg_sq: Tensor<1>,
}

pub(crate) struct Adam {
    pub config: AdamConfig,
    /// Number of steps taken so far.
    pub step: u64,
    /// Moments per PyTorch parameter name.
    pub moments: BTreeMap<String, Moments>,
}

impl Adam {
    pub(crate) fn new(config: AdamConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One Adam step on every parameter of `model` that has a gradient in `grads`.
    pub(crate) fn step(&mut self, model: Autoencoder, mut grads: GradientsParams) -> Autoencoder {
        self.step += 1;
        let mut mapper = StepMapper {
            adam: self,
            grads: &mut grads,
            path: Vec::new(),
        };
        model.map(&mut mapper)
    }

    /// PyTorch's `1 - beta1^t` and `sqrt(1 - beta2^t)` for the current step.
    fn bias_corrections(&self) -> (f64, f64) {
        let t = self.step as i32;
        let AdamConfig { beta1, beta2, .. } = self.config;
        (1.0 - beta1.powi(t), (1.0 - beta2.powi(t)).sqrt())
    }

    fn update(&mut self, name: String, param: Tensor<1>, grad: Tensor<1>) -> Tensor<1> {
        // The fused update is one of cae's CPU kernels, so it follows the kernels' own switch
        // (Flex, unless `CAE_KERNELS=burn` rules them all out) rather than a second one.
        if kernels::kernels_for(&param.device()) == Kernels::Cae {
            self.update_fused(name, param, grad)
        } else {
            self.update_tensors(name, param, grad)
        }
    }

    /// The update in Burn tensor operations: any backend.
    fn update_tensors(&mut self, name: String, param: Tensor<1>, grad: Tensor<1>) -> Tensor<1> {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        let (bias_correction1, bias_correction2_sqrt) = self.bias_corrections();
        let (exp_avg, exp_avg_sq) = match self.moments.remove(&name) {
            Some(m) => (m.exp_avg, m.exp_avg_sq),
            None => (grad.zeros_like(), grad.zeros_like()),
        };
        // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
        let exp_avg = exp_avg.clone() + (grad.clone() - exp_avg).mul_scalar(1.0 - beta1);
        let exp_avg_sq =
            exp_avg_sq.mul_scalar(beta2) + (grad.clone() * grad).mul_scalar(1.0 - beta2);
        let denom = exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias_correction2_sqrt)
            .add_scalar(eps);
        let updated = param - (exp_avg.clone() / denom).mul_scalar(lr / bias_correction1);
        self.moments.insert(
            name,
            Moments {
                exp_avg,
                exp_avg_sq,
            },
        );
        updated
    }
}

impl Adam {
    /// [`Adam::update`] as one pass over host memory (Flex): the same formula and order of
    /// operations, without the ten intermediate tensors of the generic version, which took
    /// about 7% of a training step.
    fn update_fused(&mut self, name: String, param: Tensor<1>, grad: Tensor<1>) -> Tensor<1> {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        let (bias_correction1, bias_correction2_sqrt) = self.bias_corrections();
        let device = param.device();
        let n = param.dims()[0];
        let values = |t: Tensor<1>| -> Vec<f32> {
            t.into_data()
                .convert::<f32>()
                .try_into_vec()
                .expect("f32 tensor data")
        };
        let mut p = values(param);
        let g = values(grad);
        let (mut m, mut v) = match self.moments.remove(&name) {
            Some(moments) => (values(moments.exp_avg), values(moments.exp_avg_sq)),
            None => (vec![0.0; n], vec![0.0; n]),
        };
        // The scalars as the tensor version applies them: f64 constants cast to f32.
        let step = kernels::adam::AdamStep {
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2_sqrt as f32,
            eps: eps as f32,
            step_size: (lr / bias_correction1) as f32,
        };
        kernels::adam::adam_update(&mut p, &mut m, &mut v, &g, &step);
        let tensor =
            |values: Vec<f32>| Tensor::<1>::from_data(TensorData::new(values, [n]), &device);
        self.moments.insert(
            name,
            Moments {
                exp_avg: tensor(m),
                exp_avg_sq: tensor(v),
            },
        );
        tensor(p)
    }
}

struct StepMapper<'a> {
    adam: &'a mut Adam,
    grads: &'a mut GradientsParams,
    path: Vec<String>,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let (name, _) = torch_name(&self.path);
        let dims = tensor.dims();
        let flat = |t: Tensor<D>| {
            let n = t.shape().num_elements();
            t.reshape([n])
        };
        let updated = self.adam.update(name, flat(tensor.inner()), flat(grad));
        let updated = Tensor::from_inner(updated.reshape(dims)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn moments_of_dead_parameters_do_not_go_subnormal() {
        let device = Device::flex();
        let mut adam = Adam::new(AdamConfig::default());
        let mut p = Tensor::<1>::from_floats([0.5, -0.5], &device);
        let grad = Tensor::<1>::from_floats([1e-3, 0.0], &device);
        adam.step = 1;
        p = adam.update_fused("w".into(), p, grad);
        // Without the flush the first moment of the first parameter, 1e-4 * 0.9^n, would be
        // subnormal for n in about 740..893.
        for step in 2..1000 {
            adam.step = step;
            p = adam.update_fused("w".into(), p, Tensor::<1>::zeros([2], &device));
            let m: Vec<f32> = adam.moments["w"].exp_avg.to_data().try_to_vec().unwrap();
            assert!(
                m.iter().all(|v| *v == 0.0 || v.is_normal()),
                "step {step}: {m:?}"
            );
        }
        let p: Vec<f32> = p.into_data().try_to_vec().unwrap();
        assert!(p.iter().all(|v| v.is_finite()), "{p:?}");
    }

    /// The fused host pass and the tensor version agree over several steps.
    #[test]
    fn fused_update_matches_the_tensor_version() {
        let device = Device::flex();
        device.seed(7);
        let mut fused = Adam::new(AdamConfig::default());
        let mut tensors = Adam::new(AdamConfig::default());
        let start = Tensor::<1>::random([1000], Distribution::Uniform(-1.0, 1.0), &device);
        let (mut a, mut b) = (start.clone(), start);
        for _ in 0..4 {
            let grad = Tensor::<1>::random([1000], Distribution::Normal(0.0, 0.1), &device);
            fused.step += 1;
            tensors.step += 1;
            a = fused.update_fused("w".into(), a, grad.clone());
            b = tensors.update_tensors("w".into(), b, grad);
        }
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-6, "parameters differ by {diff}");
        let (m1, m2) = (&fused.moments["w"], &tensors.moments["w"]);
        let diff: f32 = (m1.exp_avg_sq.clone() - m2.exp_avg_sq.clone())
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-9, "second moments differ by {diff}");
    }
}
