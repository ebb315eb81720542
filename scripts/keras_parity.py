#!/usr/bin/env python3
"""Writes the Keras parity fixtures for `graft augment` under tests/fixtures/keras/.

graft's augmentation claims to do what Keras' `ImageDataGenerator.apply_transform`
does (the seed project augmented with it). This script runs the real Keras on a few
small generated images with fixed transform parameters and stores, for the Rust test
`keras_parity` in tests/prepare.rs:

- inputs/<name>.png     the input images (8-bit RGB),
- expected/<case>.png   Keras' output, converted to 8-bit as Keras' own
                        `array_to_img(..., scale=False)` does (truncation),
- cases.json            each case's parameters, fill mode, cval, and the versions used.

Python is needed only to regenerate the fixtures, never to run the tests. Run it once,
by hand, in a throwaway virtual environment (Keras 3 imports a backend at start-up even
for this numpy-only code path; jax is the lightest one to install):

    python3 -m venv /tmp/venv-keras
    /tmp/venv-keras/bin/pip install keras scipy numpy pillow jax
    /tmp/venv-keras/bin/python scripts/keras_parity.py

The output is deterministic: the same versions write the same files.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import scipy  # noqa: E402
from PIL import Image  # noqa: E402

import keras  # noqa: E402
from keras.src.legacy.preprocessing.image import ImageDataGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "keras"


def make_input(height, width, seed):
    """A smooth gradient with a few hard-edged shapes and mild noise: smooth areas test
    the interpolation, edges test the geometry, and no two pixels are alike."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3), np.float64)
    img[..., 0] = 255 * cols / max(width - 1, 1)
    img[..., 1] = 255 * rows / max(height - 1, 1)
    img[..., 2] = 128 + 100 * np.sin(rows / 3.0) * np.cos(cols / 4.0)
    for _ in range(3):
        r0, c0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        r1, c1 = r0 + rng.integers(2, 6), c0 + rng.integers(2, 8)
        img[r0:r1, c0:c1] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# Three shapes on purpose: Keras centres its transform with the height and width swapped
# (see graft's augment.rs), which only shows on non-square images.
INPUTS = {
    "square": make_input(24, 24, 1),
    "wide": make_input(20, 32, 2),
    "tall": make_input(27, 18, 3),
}

IDENTITY = dict(theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0,
                flip_horizontal=False, flip_vertical=False, brightness=None)


def params(**kw):
    p = dict(IDENTITY)
    p.update(kw)
    return p


SEED_LIKE = dict(theta=23.7, tx=-2.1, ty=3.3, shear=11.5, zx=0.87, zy=1.13)

# (case name, input, fill mode, cval, parameters)
FIXED_CASES = [
    ("identity_tall", "tall", "nearest", 0.0, params()),
    ("rotate30_square", "square", "nearest", 0.0, params(theta=30.0)),
    ("rotate-75_wide", "wide", "nearest", 0.0, params(theta=-75.0)),
    ("rotate180_wide", "wide", "nearest", 0.0, params(theta=180.0)),
    ("shift_wide", "wide", "nearest", 0.0, params(tx=3.5, ty=-2.25)),
    ("shift_integer_tall", "tall", "constant", 0.0, params(tx=2.0, ty=-3.0)),
    ("shear15_tall", "tall", "nearest", 0.0, params(shear=15.0)),
    ("zoom_wide", "wide", "nearest", 0.0, params(zx=0.8, zy=1.2)),
    ("seedlike_flip_square", "square", "nearest", 0.0,
     params(flip_horizontal=True, **SEED_LIKE)),
    ("seedlike_constant0_wide", "wide", "constant", 0.0, params(**SEED_LIKE)),
    ("seedlike_constant128_tall", "tall", "constant", 128.0, params(**SEED_LIKE)),
    ("seedlike_reflect_wide", "wide", "reflect", 0.0, params(**SEED_LIKE)),
    ("far_shift_reflect_wide", "wide", "reflect", 0.0,
     params(theta=10.0, tx=41.3, ty=-23.6)),
    ("seedlike_wrap_tall", "tall", "wrap", 0.0, params(**SEED_LIKE)),
    ("far_shift_wrap_square", "square", "wrap", 0.0,
     params(theta=-20.0, tx=-30.7, ty=50.2)),
    ("brightness_dark_rotate_square", "square", "nearest", 0.0,
     params(theta=12.0, brightness=0.6)),
    ("brightness_bright_flipv_wide", "wide", "nearest", 0.0,
     params(flip_vertical=True, brightness=1.4)),
    ("flips_only_tall", "tall", "nearest", 0.0,
     params(flip_horizontal=True, flip_vertical=True)),
]


def as_json_params(p):
    out = {}
    for key, value in p.items():
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        if isinstance(value, np.bool_):
            value = bool(value)
        out[key] = value
    out["flip_horizontal"] = bool(out["flip_horizontal"])
    out["flip_vertical"] = bool(out["flip_vertical"])
    return out


def random_cases():
    """Parameters drawn by Keras itself with the seed project's settings."""
    gen = ImageDataGenerator(
        rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
        shear_range=0.2, zoom_range=0.2, horizontal_flip=True, vertical_flip=True,
        brightness_range=(0.7, 1.3), fill_mode="nearest",
    )
    cases = []
    for i, (name, mode) in enumerate(
        [("square", "nearest"), ("wide", "nearest"), ("tall", "reflect"), ("wide", "wrap")]
    ):
        p = gen.get_random_transform(INPUTS[name].shape, seed=100 + i)
        p.pop("channel_shift_intensity", None)
        cases.append((f"keras_random{i}_{name}_{mode}", name, mode, 0.0, p))
    return cases


def run_keras(image, mode, cval, p):
    gen = ImageDataGenerator(fill_mode=mode, cval=cval)
    x = image.astype(np.float32)
    y = gen.apply_transform(x, dict(p, channel_shift_intensity=None))
    # What Keras' array_to_img(scale=False) does before writing a file.
    return np.asarray(y, dtype=np.float32).astype("uint8")


def main():
    (OUT / "inputs").mkdir(parents=True, exist_ok=True)
    (OUT / "expected").mkdir(parents=True, exist_ok=True)
    for name, img in INPUTS.items():
        Image.fromarray(img, "RGB").save(OUT / "inputs" / f"{name}.png", optimize=True)
    cases = []
    for case, name, mode, cval, p in FIXED_CASES + random_cases():
        out = run_keras(INPUTS[name], mode, cval, p)
        Image.fromarray(out, "RGB").save(OUT / "expected" / f"{case}.png", optimize=True)
        cases.append(dict(name=case, input=f"inputs/{name}.png",
                          expected=f"expected/{case}.png", fill_mode=mode, cval=cval,
                          params=as_json_params(p)))
    meta = dict(
        generator="scripts/keras_parity.py",
        versions=dict(keras=keras.__version__, scipy=scipy.__version__,
                      numpy=np.__version__, pillow=PIL.__version__,
                      python=sys.version.split()[0]),
        note="expected = ImageDataGenerator(fill_mode, cval).apply_transform(float32 input, "
             "params), truncated to uint8 as keras' array_to_img(scale=False)",
        cases=cases,
    )
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
