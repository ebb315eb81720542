//! Fine-tuning: where a backbone is cut ([`Cut`]), the trainable top above the cut
//! ([`top`]), its training loop ([`train`]), and what a fine-tuned bundle records
//! ([`FineTune`]) so that every command rebuilds the same network ([`tuned_weights`]).
//!
//! The frozen part below the cut runs once per image view and its output is cached like
//! features are (the [`crate::engine::Backbone`] of [`Cut::lower`] has its own cache
//! variant), so an epoch runs only the top.

pub mod depthwise;
pub mod relu6;
pub mod top;
pub mod train;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backbone::graph::{Graph, Op, Value};
use crate::backbone::BackboneId;
use crate::error::{Error, Result};
use crate::weights::TensorMap;

/// What a fine-tuned bundle's manifest records (`fine_tune`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FineTune {
    /// Blocks trained, counted from the end (plus the head convolution).
    pub blocks: usize,
    /// SHA-256 of the published checkpoint the tuned tensors were trained from.
    pub base_weights_sha256: String,
    /// SHA-256 of `backbone.safetensors`, the tensors that changed.
    pub tensors_sha256: String,
    /// 1-based epoch whose weights were kept (best validation accuracy, then lowest
    /// validation cross-entropy); with `--fine-tune-keep average`, the last epoch of the
    /// mean.
    pub best_epoch: usize,
    pub epoch_seconds: Vec<f64>,
    /// Seconds spent computing (not reading from the cache) the activations at the cut.
    pub extract_seconds: f64,
}

/// The trainable blocks of a backbone family: what `--fine-tune N` counts.
pub fn block_count(id: BackboneId) -> Option<usize> {
    match id {
        BackboneId::InceptionV3 => None,
        _ => {
            let graph = crate::backbone::graph(id);
            Some(lite_blocks(&graph))
        }
    }
}

/// The number of `_blocks.N.` prefixes of an EfficientNet-Lite graph.
fn lite_blocks(graph: &Graph) -> usize {
    graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv { key, .. } => key
                .strip_prefix("_blocks.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok()),
            _ => None,
        })
        .max()
        .map_or(0, |last| last + 1)
}

/// A backbone cut below its top `blocks` blocks.
#[derive(Debug, Clone)]
pub struct Cut {
    pub backbone: BackboneId,
    pub blocks: usize,
    /// The whole network, unfolded (batch norm separate: the top trains with it frozen).
    pub graph: Graph,
    /// The value the top reads: the input of the first trained block.
    pub at: Value,
}

impl Cut {
    /// The cut of `backbone` run at `size x size` inputs; refuses a `blocks` the
    /// backbone does not have, naming the largest.
    pub fn new(backbone: BackboneId, size: u32, blocks: usize) -> Result<Cut> {
        let Some(count) = block_count(backbone) else {
            return Err(Error::Invalid(format!(
                "--fine-tune is not available for {backbone} yet (only the EfficientNet-Lite \
                 backbones); train its head alone (leave out --fine-tune) or use --backbone {}",
                BackboneId::DEFAULT
            )));
        };
        if blocks == 0 || blocks > count {
            return Err(Error::Invalid(format!(
                "--fine-tune {blocks}: {backbone} has {count} MBConv blocks; give 1 to {count}"
            )));
        }
        let graph = crate::backbone::graph_at(backbone, size);
        let first = format!("_blocks.{}.", count - blocks);
        let at = graph
            .nodes
            .iter()
            .find_map(|n| match &n.op {
                Op::Conv { key, input, .. } if key.starts_with(&first) => Some(*input),
                _ => None,
            })
            .ok_or_else(|| Error::Engine(format!("{backbone}: no block {first}")))?;
        Ok(Cut {
            backbone,
            blocks,
            graph,
            at,
        })
    }

    /// The frozen network below the cut, its flattened output as "features".
    pub fn lower(&self) -> Graph {
        self.graph.lower_part(self.at)
    }

    /// The cache variant of the frozen part's outputs.
    pub fn variant(&self) -> String {
        format!("cut:{}", self.blocks)
    }

    /// Checkpoint keys of the parameters above the cut that training changes: convolution
    /// weights and biases, batch-norm scale and shift (its statistics stay frozen).
    pub fn trained_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for node in &self.graph.nodes[self.at.0 + 1..] {
            match &node.op {
                Op::Conv { key, bias, .. } => {
                    keys.push(format!("{key}.weight"));
                    if *bias {
                        keys.push(format!("{key}.bias"));
                    }
                }
                Op::BatchNorm { key, .. } => {
                    keys.push(format!("{key}.weight"));
                    keys.push(format!("{key}.bias"));
                }
                _ => {}
            }
        }
        keys
    }
}

/// SHA-256 (hex) of a tuned-tensors file's bytes.
pub fn tensors_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The weights of a fine-tuned network: the base weights with the tuned tensors put in
/// their place. Refuses base weights other than those the tuning started from, and tuned
/// tensors the network does not have (or has in another shape).
pub fn tuned_weights(
    base: &mut TensorMap,
    base_sha256: &str,
    tuned: TensorMap,
    fine_tune: &FineTune,
    origin: &str,
) -> Result<()> {
    if base_sha256 != fine_tune.base_weights_sha256 {
        return Err(Error::Invalid(format!(
            "{origin} was fine-tuned from weights {} but the installed weights are {base_sha256}; \
             install the weights it was trained from or retrain",
            fine_tune.base_weights_sha256
        )));
    }
    for (key, tensor) in tuned {
        match base.get_mut(&key) {
            Some(slot) if slot.shape == tensor.shape => *slot = tensor,
            Some(slot) => {
                return Err(Error::Invalid(format!(
                    "{origin}: tuned tensor '{key}' has shape {:?} but the backbone's is {:?}; \
                     the file belongs to another model: restore it or retrain",
                    tensor.shape, slot.shape
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "{origin}: tuned tensor '{key}' is not a weight of this backbone; the file \
                     belongs to another model: restore it or retrain"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite_block_counts() {
        assert_eq!(block_count(BackboneId::EfficientNetLite0), Some(16));
        assert_eq!(block_count(BackboneId::EfficientNetLite2), Some(21));
        assert_eq!(block_count(BackboneId::InceptionV3), None);
    }

    #[test]
    fn the_cut_is_the_input_of_the_first_trained_block() {
        let cut = Cut::new(BackboneId::EfficientNetLite0, 224, 1).unwrap();
        let keys = cut.trained_keys();
        assert_eq!(keys[0], "_blocks.15._expand_conv.weight");
        assert!(keys.contains(&"_conv_head.weight".to_string()));
        assert!(keys.contains(&"_bn1.bias".to_string()));
        assert!(!keys.iter().any(|k| k.starts_with("_blocks.14.")));
        assert!(!keys.iter().any(|k| k.starts_with("_fc")));
        let err = Cut::new(BackboneId::EfficientNetLite0, 224, 17)
            .unwrap_err()
            .to_string();
        assert!(err.contains("give 1 to 16"), "{err}");
    }
}
