"""The two real image sets behind the e-MNIST part of ``m2vae-fusion bench baselines`` (issue 11 (c); the M2VAE ICLR
2019 draft, Sec. 4.1 "entangled-MNIST", Fig. 2):

- modality ``a``: scikit-learn's ``load_digits`` (1,797 real handwritten digits, 8×8 pixels, 17 grey levels; shipped
  inside scikit-learn, BSD licence). Kept at 8×8 (64 values in [0, 1]), not upsampled to the draft's 28×28: the
  upsampled image would hold no more information, only 12× the input width;
- modality ``b``: Fashion-MNIST (Xiao et al. 2017; 70,000 real 28×28 article images, MIT licence) from the Debian
  package ``dataset-fashion-mnist`` (files ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,
  labels-idx1}-ubyte.gz``), installed by ``scripts/install_bench_data.sh`` (a benchmark extra, never by the robot
  install). Average-pooled 2×2 to 14×14 (196 values in [0, 1]) to keep the 45 training runs of the benchmark within
  its CPU budget; the draft uses 28×28.

Both give ten classes (digit 0-9; T-shirt … ankle boot), the pairing of the draft: class ``c`` of one set goes with
class ``c`` of the other.

A small fixture (``test/fixtures/emnist_small.npz``: ``x`` uint8 (N, 14, 14) Fashion-MNIST images already pooled,
``y`` int (N,)) stands in for the Debian files in the tests; :func:`load_fashion` takes either.
"""
from __future__ import annotations

import gzip
import os
from typing import Dict, Tuple

import numpy as np

#: where the Debian package ``dataset-fashion-mnist`` puts the files
DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
#: side of the Fashion-MNIST images the benchmark uses (28 pooled 2×2)
FASHION_SIDE = 14
DIGITS_SIDE = 8
INSTALL_HINT = ("install it with `bash scripts/install_bench_data.sh` (or `make bench-data`; as root: apt-get install "
                "dataset-fashion-mnist), or pass --emnist-data DIR (the four *-ubyte.gz files) or a fixture .npz")


def read_idx(path: str) -> np.ndarray:
    """One gzipped IDX file (LeCun's MNIST format: magic ``0x0000 08 ndim``, big-endian int32 sizes, uint8 data).

    Raises:
        UserError: the file is not an uint8 IDX file.
    """
    from m2vae_fusion.errors import UserError

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an uint8 IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: {data.size} values, the header says {dims}")
    return data.reshape(dims)


def pool2(images: np.ndarray) -> np.ndarray:
    """2×2 average pooling of (N, H, W) images (H, W even), same dtype family as float."""
    n, h, w = images.shape
    return images.reshape(n, h // 2, 2, w // 2, 2).astype(np.float32).mean(axis=(2, 4))


def load_fashion(path: str | None = None) -> Dict[str, np.ndarray]:
    """Fashion-MNIST as the benchmark uses it: ``train_x``/``test_x`` float32 (N, 196) in [0, 1] (14×14, row-major),
    ``train_y``/``test_y`` int64 (N,) classes 0-9.

    Args:
        path: a directory with the four IDX files (default :data:`DEFAULT_FASHION_DIR`, the Debian package's) or a
            fixture ``.npz`` (``x`` uint8 (N, 14, 14), ``y`` (N,)); a fixture is split by index: every third image
            of each class is a test image.

    Raises:
        UserError: the path or one of its files is missing (the message names it and how to install the data).
    """
    from m2vae_fusion.errors import UserError

    path = path or DEFAULT_FASHION_DIR
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise UserError(f"--emnist-data: fixture {path} not found")
        with np.load(path) as z:
            if "x" not in z or "y" not in z:
                raise UserError(f"{path}: expected arrays 'x' (N, 14, 14) and 'y' (N,)")
            x, y = z["x"], z["y"].astype(np.int64)
        if x.ndim != 3 or x.shape[1:] != (FASHION_SIDE, FASHION_SIDE) or len(x) != len(y):
            raise UserError(f"{path}: 'x' must be (N, {FASHION_SIDE}, {FASHION_SIDE}) with N = len(y); got {x.shape}")
        rank = np.zeros(len(y), dtype=np.int64)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rank[idx] = np.arange(len(idx))
        test = rank % 3 == 2
        xf = x.reshape(len(x), -1).astype(np.float32) / 255.0
        return {"train_x": xf[~test], "train_y": y[~test], "test_x": xf[test], "test_y": y[test], "source": path}
    out: Dict[str, np.ndarray] = {"source": path}
    for split, (fx, fy) in FASHION_FILES.items():
        for f in (fx, fy):
            if not os.path.isfile(os.path.join(path, f)):
                raise UserError(f"Fashion-MNIST file {os.path.join(path, f)} not found: {INSTALL_HINT}")
        x = read_idx(os.path.join(path, fx))
        y = read_idx(os.path.join(path, fy)).astype(np.int64)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise UserError(f"{os.path.join(path, fx)}: expected (N, 28, 28) images with N labels, got {x.shape}")
        out[f"{split}_x"] = (pool2(x) / 255.0).reshape(len(x), -1).astype(np.float32)
        out[f"{split}_y"] = y
    return out


def load_digits_split(test_fraction: float = 1.0 / 3.0) -> Dict[str, np.ndarray]:
    """scikit-learn's real 8×8 digits, ``train_x``/``test_x`` float32 (N, 64) in [0, 1] (grey level / 16),
    ``train_y``/``test_y`` int64; a fixed split (every third image of each class, by index, is a test image, so
    every seed sees the same split, as the fixed Fashion-MNIST files)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    period = int(round(1.0 / test_fraction))
    rank = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    test = rank % period == period - 1
    return {"train_x": x[~test], "train_y": y[~test], "test_x": x[test], "test_y": y[test],
            "source": "sklearn.datasets.load_digits"}


def per_class(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """At most ``n`` randomly chosen samples of every class (all of a class with fewer), classes in order."""
    xs, ys = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = rng.permutation(idx)[:n]
        xs.append(x[idx])
        ys.append(y[idx])
    return np.concatenate(xs), np.concatenate(ys)


def make_fixture(out: str, src: str | None = None, n_per_class: int = 30, seed: int = 0) -> None:
    """Write the test fixture (``test/fixtures/emnist_small.npz``): ``n_per_class`` random images of every class of
    the Fashion-MNIST *test* file (t10k) under ``src`` (default :data:`DEFAULT_FASHION_DIR`), pooled to 14×14 and
    rounded to uint8 (``x`` (N, 14, 14)), with their classes (``y`` uint8 (N,)). The repository's fixture is
    ``make_fixture("test/fixtures/emnist_small.npz")`` (30 per class, seed 0)."""
    src = src or DEFAULT_FASHION_DIR
    x = read_idx(os.path.join(src, FASHION_FILES["test"][0]))
    y = read_idx(os.path.join(src, FASHION_FILES["test"][1]))
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in range(10)])
    np.savez_compressed(out, x=np.round(pool2(x[idx])).astype(np.uint8), y=y[idx].astype(np.uint8))
