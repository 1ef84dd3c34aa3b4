"""Image-list datasets: ImageNet-LT, Places-LT (Liu et al., OLTR, CVPR 2019), iNaturalist 2018
(Van Horn et al., CVPR 2018) and a generic ``image_list`` layout.

List files hold one ``relative/path.jpg label`` per line (blank lines skipped); images are read
lazily from ``data_root/<relative path>``. Layouts under ``split_dir`` (default: ``data_root``):

* imagenet_lt: ``ImageNet_LT_{train,val,test,open}.txt`` + ``classnames.txt`` (``wnid name``);
* places_lt:   ``Places_LT_{train,val,test,open}.txt`` + ``classnames.txt`` (``folder name``);
* image_list:  ``{train,val,test,open}.txt`` + optional ``classnames.txt``;
* inat18:      ``train2018.json`` / ``val2018.json`` (COCO style); label = index of the category
  id in the sorted list of category ids, one mapping for labels, counts and names.

train and test are required, val and open optional. Checked on load: labels in [0, C), open-set
labels all -1, and the train list covers every class of the class list.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DataError, LTData, Split
from .transforms import IMAGENET_MEAN, IMAGENET_STD

LIST_LAYOUTS = {  # dataset -> (list-file prefix, classnames.txt required)
    "imagenet_lt": ("ImageNet_LT_", True),
    "places_lt": ("Places_LT_", True),
    "image_list": ("", False),
}
DEFAULT_IMAGE_SIZE = 224


# ----------------------------------------------------------------------------- list files

def _read_lines(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(relative paths, int64 labels, 1-based line numbers) of a list file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} not found; put the list there or set split_dir= to the "
                        f"folder that holds it")
    rel, labels, lines = [], [], []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise DataError(f"{path}:{no}: expected 'relative/path.jpg label', got {line.strip()[:120]!r}; "
                                f"fix or remove that line") from None
            rel.append(parts[0])
            labels.append(label)
            lines.append(no)
    return rel, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def read_image_list(path) -> tuple[list[str], np.ndarray]:
    """``relative/path label`` lines -> (relative paths, int64 labels); DataError with file:line."""
    rel, labels, _ = _read_lines(Path(path))
    return rel, labels


def read_class_names(path) -> tuple[list[str], list[str]]:
    """``id readable name`` lines -> (ids, names); a line with one token is its own name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list {path} not found; put classnames.txt ('id name' per line) there "
                        f"or set split_dir= to the folder that holds it")
    ids, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            ids.append(parts[0])
            names.append(parts[1] if len(parts) > 1 else parts[0])
    return ids, names


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_labels(split: str, file: Path, labels: np.ndarray, lines: np.ndarray, num_classes: int,
                 class_file: Path | None) -> None:
    """Open lists must be all -1; others in [0, C). DataError names file:line and the class list."""
    bad = np.flatnonzero(labels != -1) if split == "open" else np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad) == 0:
        return
    i = int(bad[0])
    want = "-1 (open-set images)" if split == "open" else f"in [0, {num_classes})"
    source = f"the class list {class_file}" if class_file else "the train list"
    raise DataError(f"{file}:{int(lines[i])}: label {int(labels[i])} must be {want} ({len(bad)} bad lines; "
                    f"{num_classes} classes from {source}); fix the list or use the matching class list")


def check_coverage(file: Path, labels: np.ndarray, num_classes: int, class_file: Path | None) -> None:
    """Every class of the class list needs at least one training image."""
    present = np.unique(labels)
    if len(present) != num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise DataError(f"split file {file} has labels for {len(present)} classes but the class list "
                        f"{class_file or '(train labels)'} has {num_classes} (missing e.g. {missing[:10]}); "
                        f"use the train list and class list of the same dataset")


def read_list_splits(split_dir, dataset: str) -> dict:
    """Parse and validate the list files of ``dataset`` -> dict with class ids/names and per-split lists.

    Result: {"class_ids", "class_names", "class_file", "splits": {split: (rel_paths, labels, file)}}.
    """
    split_dir = Path(split_dir)
    prefix, names_required = LIST_LAYOUTS[dataset]
    class_file = split_dir / "classnames.txt"
    files = {s: split_dir / f"{prefix}{s}.txt" for s in ("train", "val", "test", "open")}
    for s in ("train", "test"):
        if not files[s].is_file():
            raise DataError(f"{dataset}: required split file {files[s]} not found; put it in split_dir "
                            f"(set split_dir= or data_root=) — the list files go together: "
                            f"{', '.join(p.name for p in files.values())}")
    parsed = {s: _read_lines(f) for s, f in files.items() if f.is_file()}
    if class_file.is_file() or names_required:
        ids, names = read_class_names(class_file)
    else:
        class_file = None
        c = int(parsed["train"][1].max()) + 1 if len(parsed["train"][1]) else 0
        ids = names = [str(i) for i in range(c)]
    for s, (rel, labels, lines) in parsed.items():
        check_labels(s, files[s], labels, lines, len(names), class_file)
    check_coverage(files["train"], parsed["train"][1], len(names), class_file)
    return {"class_ids": ids, "class_names": names, "class_file": class_file,
            "splits": {s: (rel, labels, files[s]) for s, (rel, labels, _) in parsed.items()}}


# ----------------------------------------------------------------------------- roots and splits

def check_image_root(data_root: Path, dataset: str, first_rel: str | None, list_file: Path) -> Path:
    """``data_root`` must exist and hold the first image of the train list."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DataError(f"{dataset}: image folder data_root={data_root} does not exist (looked at {data_root.resolve()}). "
                        f"Set it with data_root= (params / --set data_root=...), --data-root or $LTR_DATA_ROOT "
                        f"to the folder the list paths are relative to; the images are not in ../shared/data "
                        f"(only the split lists): download {dataset} and point data_root at it")
    if first_rel is not None and not (data_root / first_rel).is_file():
        raise DataError(f"{dataset}: the first image of {list_file} is not at {data_root / first_rel}; "
                        f"data_root must be the folder that the list's relative paths start from")
    return data_root


def make_file_split(root: Path, rel: list[str], labels: np.ndarray) -> Split:
    base = str(Path(root).resolve())
    return Split(labels=torch.from_numpy(labels), paths=[f"{base}/{r}" for r in rel])


def _lt_data(name, class_names, splits: dict[str, Split], cfg, provenance) -> LTData:
    return LTData(name=name, class_names=list(class_names), train=splits["train"], test=splits["test"],
                  val=splits.get("val"), open=splits.get("open"), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  image_size=cfg.image_size or DEFAULT_IMAGE_SIZE, provenance=provenance)


def build_list_dataset(cfg, data_root: Path, name: str) -> LTData:
    """imagenet_lt / places_lt / image_list from their list files (images loaded lazily)."""
    split_dir = Path(cfg.split_dir) if cfg.split_dir else Path(data_root)
    lists = read_list_splits(split_dir, name)
    rel0 = lists["splits"]["train"][0]
    root = check_image_root(Path(data_root), name, rel0[0] if rel0 else None, lists["splits"]["train"][2])
    splits = {s: make_file_split(root, rel, labels) for s, (rel, labels, _) in lists["splits"].items()}
    provenance = {
        "dataset": name, "source": {"kind": "image_list", "path": str(root.resolve()),
                                    "split_dir": str(split_dir.resolve())},
        "split_files": {s: {"path": str(f), "sha256": sha256_file(f)} for s, (_, _, f) in lists["splits"].items()},
        "class_list": ({"path": str(lists["class_file"]), "sha256": sha256_file(lists["class_file"])}
                       if lists["class_file"] else None),
        "class_ids": lists["class_ids"],
    }
    return _lt_data(name, lists["class_names"], splits, cfg, provenance)


# ----------------------------------------------------------------------------- iNaturalist 2018

def read_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"inat18: {path} not found; put train2018.json / val2018.json in split_dir "
                        f"(set split_dir= or data_root=)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _ = data["images"], data["annotations"], data["categories"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO-style json with 'images', 'annotations' and 'categories' "
                        f"({type(exc).__name__}: {exc}); re-download the iNaturalist 2018 annotations") from exc
    return data


def inat_samples(data: dict, path: Path, cat_index: dict[int, int]) -> tuple[list[str], np.ndarray]:
    """(file names, labels) in the order of ``images``; label = cat_index[category_id]."""
    by_image = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    rel, labels = [], []
    for img in data["images"]:
        if img["id"] not in by_image:
            raise DataError(f"{path}: image id {img['id']} ({img.get('file_name')}) has no annotation; "
                            f"use the official iNaturalist 2018 json")
        cat = by_image[img["id"]]
        if cat not in cat_index:
            raise DataError(f"{path}: image {img.get('file_name')} has category_id {cat}, which is not in the "
                            f"train categories; use train and val json of the same release")
        rel.append(img["file_name"])
        labels.append(cat_index[cat])
    return rel, np.asarray(labels, dtype=np.int64)


def build_inat18(cfg, data_root: Path) -> LTData:
    """iNaturalist 2018: train2018.json (train) and val2018.json (test, 3 per class)."""
    split_dir = Path(cfg.split_dir) if cfg.split_dir else Path(data_root)
    files = {"train": split_dir / "train2018.json", "test": split_dir / "val2018.json"}
    train_json = read_coco_json(files["train"])
    cats = sorted(train_json["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    samples = {"train": inat_samples(train_json, files["train"], cat_index)}
    samples["test"] = inat_samples(read_coco_json(files["test"]), files["test"], cat_index)
    check_coverage(files["train"], samples["train"][1], len(cats), files["train"])
    root = check_image_root(Path(data_root), "inat18", samples["train"][0][0] if samples["train"][0] else None,
                            files["train"])
    splits = {s: make_file_split(root, rel, labels) for s, (rel, labels) in samples.items()}
    provenance = {
        "dataset": "inat18", "source": {"kind": "coco_json", "path": str(root.resolve()),
                                        "split_dir": str(split_dir.resolve())},
        "split_files": {s: {"path": str(f), "sha256": sha256_file(f)} for s, f in files.items()},
        "label_rule": "index of category_id in the sorted category ids",
    }
    return _lt_data("inat18", [str(c.get("name", c["id"])) for c in cats], splits, cfg, provenance)


# ----------------------------------------------------------------------------- image files

class ImageFileDataset(torch.utils.data.Dataset):
    """(image, label) from absolute paths, opened with PIL ``.convert("RGB")``.

    A key may be an index or ``(index, sample_seed)``: the transform then runs under
    ``torch.manual_seed(sample_seed)`` in a forked RNG, so augmentation is a function of
    (seed, epoch, position) whatever the number of workers.
    """

    def __init__(self, paths: list[str], labels, transform=None) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); the file is missing, "
                            f"truncated or corrupt: copy or download it again (or drop it from the list)") from exc

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = self.load(int(i))
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    image = self.transform(image)
        return image, self.target(int(i))

    def target(self, i: int):
        """The label of image ``i`` (an int here; subclasses return other targets)."""
        return int(self.labels[i])
