//! The seed convolutional autoencoder of the tutorial, with configurable widths and input shape.

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::module::linear;
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
    pub height: usize,
    pub width: usize,
}

/// The model settings of a training run; the image shape comes from the dataset, and
/// [`ModelConfig`] is the whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelSettings {
    pub latent: usize,
    pub channels: usize,
    /// Start from these weights instead of the seed's initialisation.
    pub init: Option<std::path::PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            latent: 200,
            channels: 16,
            in_channels: 3,
            height: 32,
            width: 32,
        }
    }
}

impl ModelConfig {
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

    /// Channels of the deepest feature map (64 for the seed).
    pub fn deep_channels(&self) -> usize {
        4 * self.channels
    }

    /// Size of the flattened deepest feature map (4096 for the seed).
    pub fn flat_features(&self) -> usize {
        self.deep_channels() * (self.height / 4) * (self.width / 4)
    }

    /// (in, out, stride) of the six encoder convolutions.
    pub fn encoder_convs(&self) -> [(usize, usize, usize); 6] {
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
    pub fn decoder_convs(&self) -> [(usize, usize, usize); 6] {
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
        conv + dense
    }
}

/// A 3x3 convolution with padding 1. Weight (out, in, 3, 3) as in PyTorch.
#[derive(Module, Debug)]
pub struct Conv {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub stride: usize,
}

impl Conv {
    /// The convolution, then ReLU when `relu` is set (fused on CPU).
    pub fn forward(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        kernels::conv3x3(x, self.weight.val(), self.bias.val(), self.stride, relu)
    }
}

/// A 3x3 transposed convolution with padding 1 (output padding 1 when the stride is 2).
/// Weight (in, out, 3, 3) as in PyTorch.
#[derive(Module, Debug)]
pub struct ConvTranspose {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub stride: usize,
}

impl ConvTranspose {
    /// The transposed convolution, then ReLU when `relu` is set (fused on CPU).
    pub fn forward(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        kernels::conv_transpose3x3(x, self.weight.val(), self.bias.val(), self.stride, relu)
    }
}

/// A fully connected layer. Weight stored (in, out), the transpose of PyTorch's layout.
#[derive(Module, Debug)]
pub struct Dense {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear(x, self.weight.val(), Some(self.bias.val()))
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub convs: Vec<Conv>,
    pub linear: Dense,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub linear: Dense,
    pub convs: Vec<ConvTranspose>,
    pub deep_channels: usize,
    pub deep_height: usize,
    pub deep_width: usize,
}

/// The autoencoder. Build it with [`crate::io::weights`] (from a weight file) or [`crate::init`].
#[derive(Module, Debug)]
pub struct Autoencoder {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Encoder {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.convs.iter().fold(x, |x, conv| conv.forward(x, true));
        relu(self.linear.forward(x.flatten(1, 3)))
    }
}

impl Decoder {
    pub fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        let batch = z.dims()[0];
        let x = relu(self.linear.forward(z));
        let mut x = x.reshape([batch, self.deep_channels, self.deep_height, self.deep_width]);
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(x, i != last);
        }
        x
    }
}

impl Autoencoder {
    /// Images (N, C, H, W) normalized to [-1, 1] -> latent codes (N, latent).
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use cae::{init, model::ModelConfig, io::weights};
    ///
    /// let config = ModelConfig::default(); // the seed: latent 200, 3x32x32 images
    /// let device = Device::flex();
    /// let model = weights::build_model(&config, &init::seed_state_dict(&config, 0), &device).unwrap();
    /// let images = Tensor::<4>::zeros([2, 3, 32, 32], &device);
    /// let codes = model.encode(images.clone());
    /// assert_eq!(codes.dims(), [2, 200]);
    /// assert_eq!(model.decode(codes).dims(), [2, 3, 32, 32]);
    /// assert_eq!(model.reconstruct(images).dims(), [2, 3, 32, 32]);
    /// ```
    pub fn encode(&self, images: Tensor<4>) -> Tensor<2> {
        self.encoder.forward(images)
    }

    /// Latent codes (N, latent) -> images (N, C, H, W) in the normalized space.
    pub fn decode(&self, codes: Tensor<2>) -> Tensor<4> {
        self.decoder.forward(codes)
    }

    /// Encode then decode.
    pub fn reconstruct(&self, images: Tensor<4>) -> Tensor<4> {
        self.decode(self.encode(images))
    }

    pub fn device(&self) -> Device {
        self.encoder.linear.bias.val().device()
    }
}
