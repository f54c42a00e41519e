//! Adam exactly as PyTorch computes it (`torch.optim.Adam`, single-tensor path), with its state
//! keyed by parameter name so checkpoints are readable and survive a rebuild of the model.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::model::Autoencoder;
use crate::weights::torch_name;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
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
pub struct Moments {
    pub exp_avg: Tensor<1>,
    pub exp_avg_sq: Tensor<1>,
}

pub struct Adam {
    pub config: AdamConfig,
    /// Number of steps taken so far.
    pub step: u64,
    /// Moments per PyTorch parameter name.
    pub moments: BTreeMap<String, Moments>,
}

impl Adam {
    pub fn new(config: AdamConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One Adam step on every parameter of `model` that has a gradient in `grads`.
    pub fn step(&mut self, model: Autoencoder, mut grads: GradientsParams) -> Autoencoder {
        self.step += 1;
        let mut mapper = StepMapper {
            adam: self,
            grads: &mut grads,
            path: Vec::new(),
        };
        model.map(&mut mapper)
    }

    fn update(&mut self, name: String, param: Tensor<1>, grad: Tensor<1>) -> Tensor<1> {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
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
