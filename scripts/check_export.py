"""A real client of `graft export`: runs the exported classifier in onnxruntime for Python
and compares its answers with `graft predict --format json --top-k C`.

    python scripts/check_export.py same-pixels MODEL.onnx PNG_DIR PREDICT.json
        PNG_DIR holds images whose centre crop is exactly the input size (side = size /
        crop_fraction): graft's preprocessing is then the identity on the centre pixels,
        so both get the same pixels. Prints the largest probability difference; fails
        above 1e-4.
    python scripts/check_export.py photos MODEL.onnx PREDICT.json
        Decodes and resizes each photo named in PREDICT.json with PIL, following the
        client rule in docs/export.md and the model's `graft.preprocessing` metadata.
        Prints the share of photos whose top-1 agrees; fails under 99.5%.
    python scripts/check_export.py temperature PLAIN.onnx SCALED.onnx T PHOTO
        Checks that SCALED's probabilities are the softmax of PLAIN's logits divided by T
        (softmax(log(p) / T)), and that its metadata records T.
    python scripts/check_export.py prepare SRC_DIR DST_DIR SIDE
        Writes each image under SRC_DIR as a SIDE x SIDE PNG under DST_DIR (same tree).

Needs numpy, pillow and onnxruntime.
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

TOLERANCE = 1e-4
AGREEMENT = 0.995


def session(model):
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = s.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["graft.labels"])
    pre = json.loads(meta["graft.preprocessing"])
    return s, labels, pre


def graft_answers(path):
    """{path: {label: score}} from `graft predict --format json` (all labels)."""
    with open(path) as f:
        return {p["path"]: {t["label"]: t["score"] for t in p["top"]} for p in json.load(f)}


def run(s, pixels):
    probs, features = s.run(["probabilities", "features"], {"pixels": pixels[None]})
    return probs[0]


def decode(path):
    """What graft decodes: upright (EXIF orientation applied), RGB, alpha dropped."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def client_pixels(path, pre):
    """docs/export.md's client rule: the centred square of crop_fraction x the shorter
    side, resized to size x size with the named filter (PIL's resize with box=)."""
    img = decode(path)
    w, h = img.size
    side = min(w, h) * pre["crop_fraction"]
    left, top = (w - side) / 2, (h - side) / 2
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pre["filter"]]
    size = pre["size"]
    sized = img.resize((size, size), resample, box=(left, top, left + side, top + side))
    return np.asarray(sized, dtype=np.uint8)


def same_pixels(model, png_dir, predictions):
    s, labels, pre = session(model)
    size = pre["size"]
    answers = graft_answers(predictions)
    worst, n = 0.0, 0
    for path, graft_probs in sorted(answers.items()):
        img = np.asarray(decode(path), dtype=np.uint8)
        h, w, _ = img.shape
        side = min(w, h) * pre["crop_fraction"]
        if abs(side - size) > 1e-6 or (w - size) % 2 or (h - size) % 2:
            sys.exit(f"{path}: {w}x{h} does not crop to exactly {size}; run `prepare` first")
        top, left = (h - size) // 2, (w - size) // 2
        probs = run(s, np.ascontiguousarray(img[top : top + size, left : left + size]))
        if set(graft_probs) != set(labels):
            sys.exit(f"{predictions}: pass --top-k {len(labels)} so every label is compared")
        diff = max(abs(float(probs[labels.index(l)]) - p) for l, p in graft_probs.items())
        worst = max(worst, diff)
        n += 1
    print(f"same pixels: {n} images, largest probability difference {worst:.3g}")
    if n == 0 or worst > TOLERANCE:
        sys.exit(f"FAIL: differences above {TOLERANCE}")


def photos(model, predictions):
    s, labels, pre = session(model)
    answers = graft_answers(predictions)
    agree, n, differ = 0, 0, []
    for path, graft_probs in sorted(answers.items()):
        probs = run(s, client_pixels(path, pre))
        ours = labels[int(np.argmax(probs))]
        theirs = max(graft_probs, key=graft_probs.get)
        n += 1
        if ours == theirs:
            agree += 1
        else:
            differ.append(f"{path}: onnxruntime+PIL {ours}, graft {theirs}")
    rate = agree / n if n else 0.0
    print(f"PIL decode+resize: top-1 agrees on {agree}/{n} photos ({100 * rate:.2f}%)")
    for line in differ:
        print("  differs:", line)
    if n == 0 or rate < AGREEMENT:
        sys.exit(f"FAIL: agreement under {100 * AGREEMENT}%")


def temperature(plain, scaled, t, photo):
    t = float(t)
    s1, _, pre = session(plain)
    s2, _, _ = session(scaled)
    recorded = float(s2.get_modelmeta().custom_metadata_map["graft.temperature"])
    if recorded != t:
        sys.exit(f"FAIL: {scaled} records temperature {recorded}, expected {t}")
    pixels = client_pixels(photo, pre)
    p, q = run(s1, pixels).astype(np.float64), run(s2, pixels).astype(np.float64)
    z = np.log(p) / t
    want = np.exp(z - z.max())
    want /= want.sum()
    diff = float(np.abs(want - q).max())
    print(f"temperature {t:g}: largest difference from softmax(log(p) / T) {diff:.3g}")
    if diff > TOLERANCE or np.abs(p - q).max() < 1e-3:
        sys.exit("FAIL: the scaled model does not divide the logits by the temperature")


def prepare(src, dst, side):
    n = 0
    for root, _, files in os.walk(src):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), src)
            out = os.path.join(dst, os.path.splitext(rel)[0] + ".png")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            decode(os.path.join(root, name)).resize((side, side), Image.BICUBIC).save(out)
            n += 1
    print(f"prepared {n} images of {side}x{side}")


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["help"]
    if cmd == "same-pixels" and len(rest) == 3:
        same_pixels(*rest)
    elif cmd == "photos" and len(rest) == 2:
        photos(*rest)
    elif cmd == "temperature" and len(rest) == 4:
        temperature(*rest)
    elif cmd == "prepare" and len(rest) == 3:
        prepare(rest[0], rest[1], int(rest[2]))
    else:
        sys.exit(__doc__)
