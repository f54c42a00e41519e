//! The seed convolutional autoencoder of the tutorial, with configurable widths and input shape.

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use cae_kernels as kernels;

/// Everything that fixes the shape of a model; saved with every weight file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Size of the code between encoder and decoder.
    pub latent: usize,
    /// Width of the first convolutions; the later ones use 2x and 4x this.
    pub channels: usize,
    /// Channels of the images (1 or 3).
    pub in_channels: usize,
    /// Height of the images in pixels, a positive multiple of 4.
    pub height: usize,
    /// Width of the images in pixels, a positive multiple of 4.
    pub width: usize,
    /// A variational autoencoder ([`crate::variational`]): the encoder ends in a mean and a
    /// log-variance head instead of Linear + ReLU, and the model holds the decoder's learned
    /// log standard deviation. Left out of the JSON of plain models, whose files stay as they were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub variational: bool,
}

/// The model settings of a training run; the image shape comes from the dataset, and
/// [`ModelConfig`] is the whole.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSettings {
    /// Size of the latent code (`--latent`).
    pub latent: usize,
    /// Width of the first convolutions (`--channels`); the later ones use 2x and 4x this.
    pub channels: usize,
    /// Start from these weights instead of the seed's initialisation.
    pub init: Option<std::path::PathBuf>,
    /// Train a variational autoencoder (`--variational`); the three fields below are left out
    /// of the settings of plain runs, which stay as they were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub variational: bool,
    /// Weight of the KL term (`--beta`, beta-VAE); 1 is the ELBO.
    #[serde(
        default = "crate::variational::default_beta",
        skip_serializing_if = "crate::variational::is_default_beta"
    )]
    pub beta: f64,
    /// Epochs over which the KL weight rises linearly from 0 to beta (`--kl-warmup`).
    #[serde(default, skip_serializing_if = "crate::variational::is_zero")]
    pub kl_warmup: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            latent: 200,
            channels: 16,
            in_channels: 3,
            height: 32,
            width: 32,
            variational: false,
        }
    }
}

impl ModelConfig {
    /// Fails unless a model of this shape can be built: a positive latent size and number of
    /// channels, 1 or 3 image channels, and a height and width that are positive multiples of 4.
    pub fn validate(&self) -> Result<()> {
        if self.latent == 0 || self.channels == 0 {
            bail!(
                "latent size and channels must be positive (got latent {}, channels {})",
                self.latent,
                self.channels
            );
        }
        if !matches!(self.in_channels, 1 | 3) {
            bail!("images must have 1 or 3 channels, not {}", self.in_channels);
        }
        if self.height == 0
            || self.width == 0
            || !self.height.is_multiple_of(4)
            || !self.width.is_multiple_of(4)
        {
            bail!(
                "image height and width must be positive multiples of 4, not {}x{}",
                self.height,
                self.width
            );
        }
        Ok(())
    }

    /// Values of one image (C x H x W).
    pub fn image_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Channels of the deepest feature map (64 for the seed).
    pub(crate) fn deep_channels(&self) -> usize {
        4 * self.channels
    }

    /// Size of the flattened deepest feature map (4096 for the seed).
    pub(crate) fn flat_features(&self) -> usize {
        self.deep_channels() * (self.height / 4) * (self.width / 4)
    }

    /// (in, out, stride) of the six encoder convolutions.
    pub(crate) fn encoder_convs(&self) -> [(usize, usize, usize); 6] {
        let c = self.channels;
        [
            (self.in_channels, c, 1),
            (c, c, 1),
            (c, 2 * c, 2),
            (2 * c, 2 * c, 1),
            (2 * c, 4 * c, 2),
            (4 * c, 4 * c, 1),
        ]
    }

    /// (in, out, stride) of the six decoder transposed convolutions; stride 2 ones add output padding 1.
    pub(crate) fn decoder_convs(&self) -> [(usize, usize, usize); 6] {
        let c = self.channels;
        [
            (4 * c, 4 * c, 1),
            (4 * c, 2 * c, 2),
            (2 * c, 2 * c, 1),
            (2 * c, c, 2),
            (c, c, 1),
            (c, self.in_channels, 1),
        ]
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let conv: usize = self
            .encoder_convs()
            .iter()
            .chain(self.decoder_convs().iter())
            .map(|&(i, o, _)| i * o * 9 + o)
            .sum();
        let dense = 2 * self.flat_features() * self.latent + self.latent + self.flat_features();
        // The log-variance head and the decoder's log standard deviation.
        let variational = if self.variational {
            self.flat_features() * self.latent + self.latent + 1
        } else {
            0
        };
        conv + dense + variational
    }
}

/// A 3x3 convolution with padding 1. Weight (out, in, 3, 3) as in PyTorch.
#[derive(Module, Debug)]
pub struct Conv {
    /// The kernels, (out, in, 3, 3).
    pub weight: Param<Tensor<4>>,
    /// One bias per output channel.
    pub bias: Param<Tensor<1>>,
    /// 1, or 2 to halve the height and width.
    pub stride: usize,
}

impl Conv {
    /// The convolution, then ReLU when `relu` is set (fused on CPU), as one layer of a
    /// [`kernels::layer_stack`].
    pub(crate) fn layer(&self, relu: bool) -> kernels::StackLayer {
        kernels::StackLayer {
            layer: kernels::Layer::Conv,
            weight: self.weight.val(),
            bias: self.bias.val(),
            stride: self.stride,
            relu,
        }
    }
}

/// A 3x3 transposed convolution with padding 1 (output padding 1 when the stride is 2).
/// Weight (in, out, 3, 3) as in PyTorch.
#[derive(Module, Debug)]
pub struct ConvTranspose {
    /// The kernels, (in, out, 3, 3).
    pub weight: Param<Tensor<4>>,
    /// One bias per output channel.
    pub bias: Param<Tensor<1>>,
    /// 1, or 2 to double the height and width.
    pub stride: usize,
}

impl ConvTranspose {
    /// The transposed convolution, then ReLU when `relu` is set (fused on CPU), as one layer
    /// of a [`kernels::layer_stack`].
    pub(crate) fn layer(&self, relu: bool) -> kernels::StackLayer {
        kernels::StackLayer {
            layer: kernels::Layer::Transposed,
            weight: self.weight.val(),
            bias: self.bias.val(),
            stride: self.stride,
            relu,
        }
    }
}

/// A fully connected layer. Weight stored (in, out), the transpose of PyTorch's layout.
#[derive(Module, Debug)]
pub struct Dense {
    /// The weights, (in, out).
    pub weight: Param<Tensor<2>>,
    /// One bias per output.
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    /// The layer, then ReLU when `relu` is set (fused on CPU).
    pub(crate) fn forward(&self, x: Tensor<2>, relu: bool) -> Tensor<2> {
        kernels::dense(x, self.weight.val(), self.bias.val(), relu)
    }
}

/// Images to latent codes: six convolutions, then the code layer.
#[derive(Module, Debug)]
pub struct Encoder {
    /// The six 3x3 convolutions, each followed by ReLU.
    pub convs: Vec<Conv>,
    /// The code (plain: followed by ReLU) or, in a variational model, the posterior mean.
    pub linear: Dense,
    /// The posterior log-variance head of a variational model.
    pub log_var: Option<Dense>,
}

/// Latent codes to images: a linear layer back to the deepest feature map, then six
/// transposed convolutions.
#[derive(Module, Debug)]
pub struct Decoder {
    /// The code to the flattened deepest feature map, followed by ReLU.
    pub linear: Dense,
    /// The six 3x3 transposed convolutions, each but the last followed by ReLU.
    pub convs: Vec<ConvTranspose>,
    /// Channels of the deepest feature map (4x the model's `channels`).
    pub deep_channels: usize,
    /// Height of the deepest feature map (a quarter of the image's).
    pub deep_height: usize,
    /// Width of the deepest feature map (a quarter of the image's).
    pub deep_width: usize,
}

/// The autoencoder. Build it with [`crate::io::weights`] (from a weight file) or [`crate::init`].
#[derive(Module, Debug)]
pub struct Autoencoder {
    /// Images to latent codes.
    pub encoder: Encoder,
    /// Latent codes to images.
    pub decoder: Decoder,
    /// A variational model's log standard deviation of the decoder's Gaussian, shared by all
    /// pixels (shape `[1]`).
    pub log_sigma: Option<Param<Tensor<1>>>,
}

impl Encoder {
    /// The code: relu(linear(features)) for a plain model, the posterior mean for a variational one.
    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let variational = self.log_var.is_some();
        self.linear.forward(self.features(x), !variational)
    }

    /// A variational model's posterior: mean and log-variance (N, latent) each; `None` for a
    /// plain model.
    pub fn posterior(&self, x: Tensor<4>) -> Option<(Tensor<2>, Tensor<2>)> {
        let head = self.log_var.as_ref()?;
        let features = self.features(x);
        Some((
            self.linear.forward(features.clone(), false),
            head.forward(features, false),
        ))
    }

    /// The flattened output of the six convolutions.
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let layers = self.convs.iter().map(|conv| conv.layer(true)).collect();
        kernels::layer_stack(x, layers).flatten(1, 3)
    }
}

impl Decoder {
    pub(crate) fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        let batch = z.dims()[0];
        let x = self.linear.forward(z, true);
        let x = x.reshape([batch, self.deep_channels, self.deep_height, self.deep_width]);
        let last = self.convs.len() - 1;
        let layers = self
            .convs
            .iter()
            .enumerate()
            .map(|(i, conv)| conv.layer(i != last));
        kernels::layer_stack(x, layers.collect())
    }
}

impl Autoencoder {
    /// Images (N, C, H, W) normalized to [-1, 1] -> latent codes (N, latent); a variational
    /// model's codes are its posterior means.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use cae::{Autoencoder, ModelConfig};
    ///
    /// let config = ModelConfig::default(); // the seed: latent 200, 3x32x32 images
    /// let device = Device::flex();
    /// let model = Autoencoder::seeded(&config, 0, &device)?;
    /// let images = Tensor::<4>::zeros([2, 3, 32, 32], &device);
    /// let codes = model.encode(images.clone());
    /// assert_eq!(codes.dims(), [2, 200]);
    /// assert_eq!(model.decode(codes).dims(), [2, 3, 32, 32]);
    /// assert_eq!(model.reconstruct(images).dims(), [2, 3, 32, 32]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn encode(&self, images: Tensor<4>) -> Tensor<2> {
        self.encoder.forward(images)
    }

    /// Latent codes (N, latent) -> images (N, C, H, W) in the normalized space.
    pub fn decode(&self, codes: Tensor<2>) -> Tensor<4> {
        self.decoder.forward(codes)
    }

    /// Encode then decode (a variational model decodes the posterior mean).
    pub fn reconstruct(&self, images: Tensor<4>) -> Tensor<4> {
        self.decode(self.encode(images))
    }

    /// Whether this is a variational autoencoder (its encoder has a log-variance head).
    pub fn is_variational(&self) -> bool {
        self.encoder.log_var.is_some()
    }

    /// The device the model's parameters are on.
    pub fn device(&self) -> Device {
        self.encoder.linear.bias.val().device()
    }
}
