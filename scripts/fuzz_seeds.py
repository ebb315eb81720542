#!/usr/bin/env python3
"""Seeds the cargo-fuzz corpora (fuzz/corpus/<target>/) from the hostile-input corpus
that scripts/bad_inputs.py writes, plus the checkpoint fixtures in tests/fixtures/pth.

    python3 scripts/bad_inputs.py --output /tmp/bad --seed 0
    python3 scripts/fuzz_seeds.py --corpus /tmp/bad --output fuzz/corpus

Each file becomes a seed in the input format its target reads (see the comment at
the top of each fuzz/fuzz_targets/*.rs). Files over --max-bytes are left out: libFuzzer
mutates small inputs faster, and the large cases are covered by tests/hardening_corpus.rs.
Standard library only.
"""

import argparse
import hashlib
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description="Seed fuzz/corpus/<target>/ from a bad_inputs.py corpus.")
    parser.add_argument("--corpus", required=True, type=Path, help="a folder written by scripts/bad_inputs.py")
    parser.add_argument("--output", type=Path, default=REPO / "fuzz" / "corpus", help="default: fuzz/corpus")
    parser.add_argument("--max-bytes", type=int, default=64 * 1024, help="largest seed kept (default 65536)")
    args = parser.parse_args()
    src = args.corpus
    if not (src / "INDEX.tsv").is_file():
        parser.error(f"{src} is not a corpus written by scripts/bad_inputs.py (no INDEX.tsv)")
    counts = {}

    def seed(target, data):
        if len(data) > args.max_bytes:
            return
        folder = args.output / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
        counts[target] = counts.get(target, 0) + 1

    def files(pattern):
        return sorted(p for p in src.glob(pattern) if p.is_file() and not p.is_symlink())

    images = files("images/**/*") + files("flat/*")
    for p in images:
        data = p.read_bytes()
        seed("decode_image", data)
        seed("classify_request", b"\x00\x00" + data)  # raw body
        part = (
            b"--X\r\nContent-Disposition: form-data; name=\"image\"; filename=\"" + p.name.encode() + b"\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--X--\r\n"
        )
        seed("classify_request", b"\x01\x07top_k=2" + part)
    seed("classify_request", b"\x03\x00multipart/form-data; boundary=\"q\"\n--q--\r\n")
    for p in files("labels/*"):
        seed("labels_csv", p.read_bytes())
    for d in sorted(x for x in (src / "bundles").iterdir() if x.is_dir()):
        m, h = d / "manifest.json", d / "head.safetensors"
        manifest = m.read_bytes() if m.is_file() else b""
        head = h.read_bytes() if h.is_file() else b""
        seed("bundle_load", struct.pack("<H", min(len(manifest), 0xFFFF)) + manifest[:0xFFFF] + head)
    for p in files("weights/*.pth") + sorted((REPO / "tests" / "fixtures" / "pth").glob("*.pth")):
        seed("pth_checkpoint", p.read_bytes())
    for p in files("weights/*.safetensors") + files("homes/*/models/*.safetensors") + files("bundles/*/head.safetensors"):
        seed("safetensors_weights", p.read_bytes())
    for target, n in sorted(counts.items()):
        print(f"{target}: {n} seeds in {args.output / target}")


if __name__ == "__main__":
    main()
