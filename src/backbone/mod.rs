//! The networks: one definition each, their weights and the engines that run them.

pub mod spec;

pub use spec::{BackboneId, BackboneSpec, Filter, Preprocess, WeightsSource};
