//! ImageNet-1k class names (torchvision's order) and top-k of logits.

use std::sync::LazyLock;

/// The 1000 ImageNet class names, index = logit position.
pub static IMAGENET_CLASSES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    include_str!("../../assets/imagenet_classes.txt")
        .lines()
        .collect()
});

/// Softmax of `logits`, computed stably.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / sum).collect()
}

/// The `k` most probable classes with their softmax probabilities, best first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
    order.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_complete() {
        assert_eq!(IMAGENET_CLASSES.len(), 1000);
        assert_eq!(IMAGENET_CLASSES[954], "banana");
        assert_eq!(IMAGENET_CLASSES[945], "bell pepper");
    }

    #[test]
    fn top_k_orders_by_probability() {
        let top = top_k(&[0.0, 3.0, 1.0, 3.0], 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f32 = softmax(&[0.0, 3.0, 1.0, 3.0]).iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
