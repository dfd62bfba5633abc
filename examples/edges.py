"""Sobel edge maps of an image through convkit.conv2d, written as a PNG (NumPy only, no torch).

    python examples/edges.py [IMAGE] [-o edges.png] [--size 512]

Without IMAGE, a synthetic picture (a disc, a square and a triangle on a gradient) is used;
an IMAGE file is read with matplotlib (``pip install "convkit[plot]"``). The PNG shows three
panels side by side: the x gradient, the y gradient (both mid-grey at zero) and the
gradient magnitude.

Both Sobel filters run in one conv2d call, as two output channels of one weight.
"""
from __future__ import annotations

import argparse
import struct
import zlib

import numpy as np

import convkit

# The Sobel filter of the design notes; conv2d cross-correlates, so it responds positively
# where the image gets darker to the right. Its transpose is the vertical filter.
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
SOBEL_Y = SOBEL_X.T.copy()
GAP = 4  # pixels of white between the panels


def synthetic_image(size: int = 512) -> np.ndarray:
    """A (size, size) float64 picture in [0, 1]: shapes with sharp edges on a smooth gradient."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.3 * x + 0.1 * y
    image[(x - 0.3) ** 2 + (y - 0.3) ** 2 < 0.15 ** 2] = 0.9
    image[(abs(x - 0.7) < 0.12) & (abs(y - 0.35) < 0.12)] = 0.1
    image[(y > 0.55) & (y < 0.9) & (abs(x - 0.5) < (y - 0.55) * 0.8)] = 0.7
    return image


def load_gray(path: str) -> np.ndarray:
    """An image file as a float64 (H, W) array in [0, 1] (RGB averaged, alpha dropped)."""
    try:
        from matplotlib import image as mpimg
    except ImportError:
        raise SystemExit('reading an image file needs matplotlib: pip install "convkit[plot]"') from None
    raw = mpimg.imread(path)  # float in [0, 1] for PNG, uint8 for JPEG and the like
    a = raw.astype(np.float64) / (255.0 if np.issubdtype(raw.dtype, np.integer) else 1.0)
    return a[..., :3].mean(axis=-1) if a.ndim == 3 else a


def sobel(image: np.ndarray) -> tuple:
    """(gx, gy, magnitude) of a 2-D image, each (H-2, W-2): valid padding, as correlate2d's 'valid'."""
    weight = np.stack([SOBEL_X, SOBEL_Y])[:, None].astype(image.dtype)  # (2 filters, 1 channel, 3, 3)
    g = convkit.conv2d(image[None, None], weight)[0]
    return g[0], g[1], np.hypot(g[0], g[1])


def to_uint8(a: np.ndarray, signed: bool) -> np.ndarray:
    """Scale to 0..255: signed maps put zero at mid-grey, magnitudes put zero at black."""
    top = float(np.abs(a).max()) or 1.0
    scaled = (a / top + 1) / 2 if signed else a / top
    return np.round(scaled * 255).astype(np.uint8)


def write_png(path: str, gray: np.ndarray) -> None:
    """An 8-bit grayscale (H, W) array as a PNG: signature, IHDR, one zlib IDAT, IEND."""
    h, w = gray.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.hstack([np.zeros((h, 1), np.uint8), gray.astype(np.uint8)])  # filter type 0 ahead of each row
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def panels(gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    gap = np.full((gx.shape[0], GAP), 255, np.uint8)
    return np.hstack([to_uint8(gx, True), gap, to_uint8(gy, True), gap, to_uint8(magnitude, False)])


def main(argv=None) -> dict:
    """Run from the command line's arguments; returns the image and its edge maps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="image file (default: a synthetic picture)")
    parser.add_argument("-o", "--output", default="edges.png")
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic picture")
    args = parser.parse_args(argv)
    image = load_gray(args.image) if args.image else synthetic_image(args.size)
    gx, gy, magnitude = sobel(image)
    write_png(args.output, panels(gx, gy, magnitude))
    print(f"{image.shape[0]}x{image.shape[1]} image -> {gx.shape[0]}x{gx.shape[1]} edge maps in {args.output}")
    return {"image": image, "gx": gx, "gy": gy, "magnitude": magnitude}


if __name__ == "__main__":
    main()
