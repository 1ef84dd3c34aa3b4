"""Per-class text corpora: sentences describing each class, from files or prompt templates.

VL-LTR (Tian et al., ECCV 2022, arXiv 2111.13579, §3.1) pairs every class with many sentences: the
80 CLIP ImageNet prompt templates filled with the class name, followed by the class's Wikipedia
article split into sentences, each at most 75 CLIP-BPE tokens (+ SOT/EOT = context 77).
Its Wikipedia files are not available here, so a corpus is combined from *sources*, each a string:

``templates``
    the 80 CLIP ImageNet templates (Radford et al. 2021, as shipped by open_clip) filled with the
    readable class name (``_`` and ``/`` as spaces). VL-LTR fills "{} " (trailing space, "a photo of
    a tench ."): the CLIP BPE gives identical tokens with and without that space.
``wiki:<folder>``
    VL-LTR's own layout: ``<folder>/wiki/desc_<i>.txt`` (or ``<folder>/desc_<i>.txt``) for class
    index i, one sentence per line.
``json:<file>[|<format>]``
    ``{class name: [sentences]}`` (CuPL, classify_by_description descriptors, Label-free CBM
    concepts). Keys are matched to classes by normalised name (lower case; ``_ / - ,`` as spaces;
    a trailing "(...)" qualifier ignored as a fallback). Several classes with one normalised name
    share its entry: CuPL's and Label-free CBM's ImageNet files have 998 keys because "missile" and
    "sunglasses" name two classes each in their name list (n03773504/n04008634, n04355933/n04356056),
    so those classes get the same sentences.
``tsv:<file>[|<format>]``
    ``key<TAB>text`` lines (e.g. timm's ``imagenet_synset_to_definition.txt``, WordNet glosses);
    a key is matched to a class id (ImageNet wnid) first, then to a normalised class name.

``<format>`` turns an entry into a sentence with ``{name}`` (readable class name) and ``{text}``;
the default is ``{text}`` for json and ``{name}: {text}.`` for tsv. E.g. descriptors:
``json:classify_by_description/descriptors_imagenet.json|{name}, which has {text}.``.
Relative paths are read under ``text_root``.

Every sentence longer than ``max_tokens`` BPE tokens is split greedily at word boundaries into
pieces of at most ``max_tokens`` tokens (the CLIP BPE encodes whitespace-separated words
independently, so token counts add up over words). A class left without any sentence is an error
naming it; a source that misses classes is recorded (``ClassText.missing``) and printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .base import DataError

DEFAULT_TEXT_ROOT = "data/class_text"
MAX_TOKENS = 75
SOURCE_KINDS = ("templates", "wiki", "json", "tsv")
DEFAULT_FORMAT = {"json": "{text}", "tsv": "{name}: {text}."}


@dataclass
class ClassText:
    """Sentences per class (``sentences[c]``: list of str) plus where they came from."""

    class_names: list[str]
    sentences: list[list[str]]
    sources: list[dict] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def counts(self) -> list[int]:
        """Sentences per class."""
        return [len(s) for s in self.sentences]

    def flat(self) -> tuple[list[str], list[int]]:
        """(all sentences, class of each) in class order."""
        texts, labels = [], []
        for c, sents in enumerate(self.sentences):
            texts += sents
            labels += [c] * len(sents)
        return texts, labels

    def record(self) -> dict:
        """What results.json records: sources (path, sha256, coverage), counts, classes missed per source."""
        counts = self.counts
        missing = {k: {"classes": len(v), "examples": v[:20]} for k, v in self.missing.items()}
        return {"sources": self.sources, "sentences": sum(counts), "min_per_class": min(counts),
                "max_per_class": max(counts), "missing_per_source": missing}


def readable_name(name: str) -> str:
    """Class name as text: ``_`` and ``/`` as spaces, whitespace collapsed (VL-LTR's ImageNet/Places rule)."""
    return re.sub(r"\s+", " ", re.sub(r"[_/]", " ", str(name))).strip()


def normalise_name(name: str) -> str:
    """Matching key: lower case, ``_ / - ,`` as spaces, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[_/\-,]", " ", str(name).lower())).strip()


def _bare(key: str) -> str:
    """``key`` without a trailing parenthesised qualifier ("arcade (passageway)" -> "arcade")."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", key).strip()


def clip_templates() -> list[Callable[[str], str]]:
    """The 80 CLIP ImageNet prompt templates (open_clip's ``OPENAI_IMAGENET_TEMPLATES``)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def default_token_counter() -> Callable[[str], int]:
    """Number of CLIP BPE tokens of a text (no SOT/EOT), with open_clip's SimpleTokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    return lambda text: len(tok.encode(text))


def split_long(sentence: str, count_tokens: Callable[[str], int], max_tokens: int = MAX_TOKENS) -> list[str]:
    """``sentence`` if it has at most ``max_tokens`` tokens, else greedy word-boundary pieces that do.

    A single word longer than ``max_tokens`` tokens stays one piece (the tokenizer truncates it).
    """
    sentence = " ".join(sentence.split())
    if not sentence:
        return []
    if count_tokens(sentence) <= max_tokens:
        return [sentence]
    pieces, words, used = [], [], 0
    for word in sentence.split(" "):
        n = count_tokens(word)
        if words and used + n > max_tokens:
            pieces.append(" ".join(words))
            words, used = [], 0
        words.append(word)
        used += n
    if words:
        pieces.append(" ".join(words))
    return pieces


def parse_source(spec: str) -> tuple[str, str, str]:
    """``kind:path|format`` -> (kind, path, format); DataError on an unknown kind."""
    spec = spec.strip()
    if spec == "templates":
        return "templates", "", ""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or kind == "templates" or not rest:
        raise DataError(f"class text source {spec!r} must be 'templates', 'wiki:<folder>', "
                        f"'json:<file>[|format]' or 'tsv:<file>[|format]'")
    path, _, fmt = rest.partition("|")
    return kind, path.strip(), fmt or DEFAULT_FORMAT.get(kind, "")


def resolve_text_root(text_root: str = "") -> Path:
    """``text_root``, else ``$LTR_TEXT_ROOT``, else ``data/class_text``."""
    return Path(text_root or os.environ.get("LTR_TEXT_ROOT") or DEFAULT_TEXT_ROOT)


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return root / p


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_wiki(folder: Path, num_classes: int) -> list[list[str]]:
    """VL-LTR layout: ``<folder>/wiki/desc_<i>.txt`` (or ``<folder>/desc_<i>.txt``), one sentence a line."""
    base = folder / "wiki" if (folder / "wiki").is_dir() else folder
    if not base.is_dir():
        raise DataError(f"class text folder {folder} not found; it must hold wiki/desc_<class index>.txt files "
                        f"(VL-LTR's layout); set vlltr_text_root or give an absolute path")
    out = []
    for c in range(num_classes):
        f = base / f"desc_{c}.txt"
        out.append([line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
                   if f.is_file() else [])
    return out


def _class_index(class_names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    full: dict[str, list[int]] = {}
    bare: dict[str, list[int]] = {}
    for c, name in enumerate(class_names):
        key = normalise_name(name)
        full.setdefault(key, []).append(c)
        bare.setdefault(_bare(key), []).append(c)
    return full, bare


def _match(key: str, full: dict, bare: dict, ids: dict | None = None) -> list[int]:
    if ids and key in ids:
        return ids[key]
    k = normalise_name(key)
    return full.get(k) or full.get(_bare(k)) or bare.get(_bare(k)) or []


def _fill(fmt: str, name: str, text: str, where: str) -> str:
    try:
        return fmt.format(name=name, text=text)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"{where}: format {fmt!r} may only use {{name}} and {{text}} ({err})") from None


def read_json(path: Path, class_names: Sequence[str], fmt: str = "{text}") -> tuple[list[list[str]], int]:
    """``{class name: [sentences]}`` -> (sentences per class, number of keys that matched no class)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, (list, str)) for v in doc.values()):
        raise DataError(f"{path}: class text JSON must map class names to lists of sentences")
    full, bare = _class_index(class_names)
    out: list[list[str]] = [[] for _ in class_names]
    unmatched = 0
    for key, values in doc.items():
        classes = _match(key, full, bare)
        if not classes:
            unmatched += 1
        for c in classes:
            name = readable_name(class_names[c])
            out[c] += [_fill(fmt, name, str(v), str(path)) for v in ([values] if isinstance(values, str) else values)]
    if unmatched == len(doc):
        raise DataError(f"{path}: none of its {len(doc)} keys (e.g. {list(doc)[:3]}) matches a class name "
                        f"(e.g. {list(class_names)[:3]}); is it the text of another dataset?")
    return out, unmatched


def read_tsv(path: Path, class_names: Sequence[str], class_ids: Sequence[str] | None = None,
             fmt: str = "{name}: {text}.") -> tuple[list[list[str]], int]:
    """``key<TAB>text`` lines -> (sentences per class, lines that matched no class)."""
    full, bare = _class_index(class_names)
    ids: dict[str, list[int]] = {}
    for c, i in enumerate(class_ids or []):
        ids.setdefault(str(i), []).append(c)
    out: list[list[str]] = [[] for _ in class_names]
    unmatched = 0
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, text = line.partition("\t")
        if not sep:
            raise DataError(f"{path}:{no}: expected 'key<TAB>text', got {line[:80]!r}")
        classes = _match(key.strip(), full, bare, ids)
        unmatched += not classes
        for c in classes:
            out[c].append(_fill(fmt, readable_name(class_names[c]), text.strip(), str(path)))
    return out, unmatched


def build_class_text(class_names: Sequence[str], sources: Sequence[str], *, class_ids: Sequence[str] | None = None,
                     text_root: str = "", max_tokens: int = MAX_TOKENS,
                     count_tokens: Callable[[str], int] | None = None, verbose: bool = True) -> ClassText:
    """Combine ``sources`` (see the module doc) into sentences per class, each <= ``max_tokens`` tokens.

    Raises DataError when no source is given, a file is missing, or some class has no sentence at all
    (the message names the classes and the sources tried).
    """
    if not sources:
        raise DataError("no class text sources given; set vlltr_text_sources, e.g. "
                        "[templates, 'json:CuPL/cifar10_prompts_full.json']")
    names = list(class_names)
    root = resolve_text_root(text_root)
    count_tokens = count_tokens or default_token_counter()
    per_class: list[list[str]] = [[] for _ in names]
    records, missing = [], {}
    for spec in sources:
        kind, path, fmt = parse_source(spec)
        rec: dict = {"source": spec, "kind": kind}
        if kind == "templates":
            got = [[t(readable_name(n)) for t in clip_templates()] for n in names]
        else:
            file = _resolve(path, root)
            if not file.exists():
                raise DataError(f"class text source {spec!r}: {file} not found; relative paths are read under "
                                f"the text root {root} (set vlltr_text_root or $LTR_TEXT_ROOT to the folder "
                                f"holding the class text, e.g. ../shared/data/class_text)")
            rec["path"] = str(file.resolve())
            if kind == "wiki":
                got = read_wiki(file, len(names))
            elif kind == "json":
                got, rec["unmatched_keys"] = read_json(file, names, fmt)
                rec["sha256"] = _sha256(file)
            else:
                got, rec["unmatched_lines"] = read_tsv(file, names, class_ids, fmt)
                rec["sha256"] = _sha256(file)
        split = [[p for s in sents for p in split_long(s, count_tokens, max_tokens)] for sents in got]
        lacking = [names[c] for c, s in enumerate(split) if not s]
        rec["classes_covered"] = len(names) - len(lacking)
        rec["sentences"] = sum(len(s) for s in split)
        if lacking:
            missing[spec] = lacking
            if verbose:
                print(f"class text: {spec} has no sentence for {len(lacking)} class(es): {lacking[:10]}", flush=True)
        for c, s in enumerate(split):
            per_class[c] += s
        records.append(rec)
    empty = [names[c] for c, s in enumerate(per_class) if not s]
    if empty:
        raise DataError(f"no class text for {len(empty)} class(es): {', '.join(map(repr, empty[:20]))}"
                        f"{' ...' if len(empty) > 20 else ''} (sources tried: {list(sources)}); add a source that "
                        f"covers them, e.g. 'templates' (the 80 CLIP prompts), or fix the class names in the files")
    return ClassText(class_names=names, sentences=per_class, sources=records, missing=missing)


def sample_table(text: ClassText, per_class: int = 3, classes: Sequence[int] | None = None):
    """A DataFrame (class, name, sentences, examples) for display: the first ``per_class`` sentences."""
    import pandas as pd

    rows = []
    for c in classes if classes is not None else range(len(text.class_names)):
        for i, s in enumerate(text.sentences[c][:per_class]):
            rows.append({"class": c, "name": text.class_names[c], "sentences": len(text.sentences[c]),
                         "#": i, "sentence": s})
    return pd.DataFrame(rows)
