//! The softmax head: its weights as plain data (for inference and bundles) and as a burn
//! module (for training).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData as BurnData};

use crate::error::{Error, Result};

/// A trained head. `logits = features · weight + bias`, `weight` is `[dim, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadWeights {
    pub dim: usize,
    pub classes: usize,
    /// `[dim, classes]`, row-major.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
}

impl HeadWeights {
    /// Logits of one feature vector `[dim]` -> `[classes]`.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        let mut out = self.bias.clone();
        for (d, &x) in features.iter().enumerate().take(self.dim) {
            if x == 0.0 {
                continue; // ReLU features are often exactly zero.
            }
            let row = &self.weight[d * self.classes..(d + 1) * self.classes];
            for (o, w) in out.iter_mut().zip(row) {
                *o += x * w;
            }
        }
        out
    }

    /// Softmax probabilities of one feature vector.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        crate::backbone::imagenet::softmax(&self.logits(features))
    }

    pub fn check(&self) -> Result<()> {
        if self.weight.len() != self.dim * self.classes || self.bias.len() != self.classes {
            return Err(Error::Invalid(format!(
                "head weights have {} + {} values, expected {}x{} + {}",
                self.weight.len(),
                self.bias.len(),
                self.dim,
                self.classes,
                self.classes
            )));
        }
        if !self.is_finite() {
            return Err(Error::Invalid(
                "head weights hold NaN or infinite values (training diverged); retrain with a \
                 lower --learning-rate"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether every weight and bias is a finite number.
    pub fn is_finite(&self) -> bool {
        self.weight.iter().chain(&self.bias).all(|v| v.is_finite())
    }
}

/// The head as a burn module, for training.
#[derive(Module, Debug)]
pub struct SoftmaxHead {
    /// `[dim, classes]`.
    pub weight: Param<Tensor<2>>,
    /// `[classes]`.
    pub bias: Param<Tensor<1>>,
}

impl SoftmaxHead {
    pub fn from_weights(w: &HeadWeights, device: &Device) -> SoftmaxHead {
        let weight = Tensor::from_data(BurnData::new(w.weight.clone(), [w.dim, w.classes]), device);
        let bias = Tensor::from_data(BurnData::new(w.bias.clone(), [w.classes]), device);
        SoftmaxHead {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
        }
    }

    /// Features `[batch, dim]` -> logits `[batch, classes]`.
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let classes = self.bias.val().dims()[0];
        features.matmul(self.weight.val()) + self.bias.val().reshape([1, classes])
    }

    pub fn to_weights(&self) -> Result<HeadWeights> {
        let [dim, classes] = self.weight.val().dims();
        let read = |t: BurnData| {
            t.try_to_vec::<f32>()
                .map_err(|e| Error::Engine(format!("{e:?}")))
        };
        Ok(HeadWeights {
            dim,
            classes,
            weight: read(self.weight.val().into_data())?,
            bias: read(self.bias.val().into_data())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_are_features_times_weight_plus_bias() {
        let w = HeadWeights {
            dim: 2,
            classes: 3,
            weight: vec![1.0, 0.0, -1.0, 0.5, 2.0, 0.0],
            bias: vec![0.1, 0.2, 0.3],
        };
        let l = w.logits(&[2.0, 4.0]);
        assert_eq!(l, vec![0.1 + 2.0 + 2.0, 0.2 + 8.0, 0.3 - 2.0]);
        let p = w.probabilities(&[2.0, 4.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }

    #[test]
    fn burn_module_matches_plain_inference() {
        let w = HeadWeights {
            dim: 2,
            classes: 3,
            weight: vec![1.0, 0.0, -1.0, 0.5, 2.0, 0.0],
            bias: vec![0.1, 0.2, 0.3],
        };
        let device = Device::flex();
        let head = SoftmaxHead::from_weights(&w, &device);
        let x = Tensor::from_data(BurnData::new(vec![2.0f32, 4.0], [1, 2]), &device);
        let got = head.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, w.logits(&[2.0, 4.0]));
        assert_eq!(head.to_weights().unwrap(), w);
    }
}
