//! The new classification layer trained on top of a frozen backbone: a softmax layer
//! with `N + D*N` parameters, as retrain.py's `final_training_ops`.

pub mod calibrate;
pub mod model;
pub mod train;

pub use model::HeadWeights;
pub use train::{train_head, Optimizer, SplitData, TrainConfig, TrainEvent, TrainResult};
