"""Class text corpora (VL-LTR): templates, VL-LTR's wiki layout, JSON and TSV files, the 75-token split."""

from __future__ import annotations

import json

import pytest

from ltr_core.data import DataError
from ltr_core.data import class_text as ct


@pytest.fixture(scope="module")
def count():
    return ct.default_token_counter()


def test_templates_fill_the_80_clip_prompts_with_readable_names():
    text = ct.build_class_text(["golden_retriever", "sea/lake"], ["templates"], verbose=False)
    assert text.counts == [80, 80]
    assert "a bad photo of a golden retriever." in text.sentences[0]
    assert "a photo of the sea lake." in text.sentences[1]
    assert text.record()["sources"][0]["classes_covered"] == 2


def test_split_long_keeps_pieces_within_the_token_budget(count):
    words = [f"word{i}" for i in range(120)]  # "word17" is 2+ BPE tokens: far above 75 in total
    sentence = " ".join(words)
    assert count(sentence) > 75
    pieces = ct.split_long(sentence, count, 75)
    assert len(pieces) > 1 and all(count(p) <= 75 for p in pieces)
    assert " ".join(pieces).split() == words  # nothing lost or reordered, cut at word boundaries
    # greedy: every piece but the last would overflow with the next word
    for a, b in zip(pieces, pieces[1:]):
        assert count(a + " " + b.split()[0]) > 75
    assert ct.split_long("  a   short  one ", count) == ["a short one"]


def test_wiki_layout_one_sentence_per_line_split_to_75_tokens(tmp_path, count):
    wiki = tmp_path / "imagenet" / "wiki"
    wiki.mkdir(parents=True)
    long = " ".join(["the tench is a fish of european rivers"] * 12)
    (wiki / "desc_0.txt").write_text("The tench is a fish.\n\n" + long + "\n")
    (wiki / "desc_1.txt").write_text("A goldfish is orange.\nIt lives in ponds.\n")
    text = ct.build_class_text(["tench", "goldfish"], [f"wiki:{tmp_path / 'imagenet'}"], verbose=False)
    assert text.sentences[1] == ["A goldfish is orange.", "It lives in ponds."]
    assert text.sentences[0][0] == "The tench is a fish."
    assert len(text.sentences[0]) > 2 and all(count(s) <= 75 for s in text.sentences[0])
    assert " ".join(text.sentences[0][1:]) == long


def test_json_keys_match_by_normalised_name_and_collapse(tmp_path):
    doc = {"Golden Retriever": ["A dog with golden fur."], "missile": ["A rocket."], "arcade (passageway)": ["Arches."],
           "unrelated": ["Never used."]}
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(doc))
    names = ["golden_retriever", "missile", "missile", "arcade"]
    text = ct.build_class_text(names, [f"json:{path}"], verbose=False)
    assert text.sentences == [["A dog with golden fur."], ["A rocket."], ["A rocket."], ["Arches."]]
    assert text.record()["sources"][0]["unmatched_keys"] == 1
    fmt = ct.build_class_text(names[:1], [f"json:{path}|{{name}}, which has {{text}}"], verbose=False)
    assert fmt.sentences == [["golden retriever, which has A dog with golden fur."]]


def test_text_root_resolves_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "CuPL").mkdir()
    (tmp_path / "CuPL" / "x.json").write_text(json.dumps({"cat": ["A cat."]}))
    assert ct.build_class_text(["cat"], ["json:CuPL/x.json"], text_root=str(tmp_path), verbose=False).counts == [1]
    monkeypatch.setenv("LTR_TEXT_ROOT", str(tmp_path))
    assert ct.build_class_text(["cat"], ["json:CuPL/x.json"], verbose=False).counts == [1]
    with pytest.raises(DataError, match="not found.*text root"):
        ct.build_class_text(["cat"], ["json:CuPL/missing.json"], verbose=False)


def test_tsv_matches_class_ids_first(tmp_path):
    path = tmp_path / "gloss.txt"
    path.write_text("n01\ta freshwater fish\nn99\tsomething else\nn02\ta small orange fish\n")
    text = ct.build_class_text(["tench", "goldfish"], [f"tsv:{path}"], class_ids=["n01", "n02"], verbose=False)
    assert text.sentences == [["tench: a freshwater fish."], ["goldfish: a small orange fish."]]
    assert text.record()["sources"][0]["unmatched_lines"] == 1


def test_class_without_text_is_an_error_naming_it(tmp_path, capsys):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"cat": ["A cat."], "dog": ["A dog."]}))
    with pytest.raises(DataError, match=r"no class text for 2 class\(es\): 'axolotl', 'quokka'"):
        ct.build_class_text(["cat", "axolotl", "dog", "quokka"], [f"json:{path}"], verbose=False)
    # combined with templates every class has text; the gap of the JSON source is recorded and printed
    text = ct.build_class_text(["cat", "axolotl"], ["templates", f"json:{path}"])
    assert text.counts == [81, 80] and text.missing == {f"json:{path}": ["axolotl"]}
    assert "axolotl" in capsys.readouterr().out
    with pytest.raises(DataError, match="none of its 2 keys"):
        ct.build_class_text(["axolotl"], [f"json:{path}"], verbose=False)


def test_bad_specs_are_explained():
    with pytest.raises(DataError, match="must be 'templates'"):
        ct.build_class_text(["a"], ["wikipedia"], verbose=False)
    with pytest.raises(DataError, match="no class text sources"):
        ct.build_class_text(["a"], [], verbose=False)


def test_shared_cupl_cifar10_covers_every_class(shared_data):
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    text = ct.build_class_text(names, ["templates", "json:CuPL/cifar10_prompts_full.json"],
                               text_root=str(shared_data / "class_text"), verbose=False)
    assert text.counts == [110] * 10 and not text.missing
    assert text.record()["sources"][1]["sha256"].startswith("c624136b")
