"""report option ``paired``: one suite's runs beside another's that differ in one thing, with the difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ltr_core import paired, report, runner
from test_report import make_suite, write_runs


def _runs(rows):
    return pd.DataFrame(rows, columns=["name", "seed", "top1", "many"])


def test_paired_frame_pairs_by_seed_and_averages_the_differences_by_hand():
    this = _runs([("a", 0, 70.0, 80.0), ("a", 1, 74.0, 84.0), ("a", 2, 60.0, 61.0), ("b", 0, 50.0, 55.0)])
    other = _runs([("a_jpeg", 0, 66.0, 79.0), ("a_jpeg", 1, 69.0, 80.0), ("a_jpeg", 3, 10.0, 10.0)])
    frame = paired.paired_frame(this, other, {"a": "a_jpeg", "b": "b_jpeg"}, ["top1", "many"]).set_index("name")
    # a: seeds 0 and 1 on both sides (2 only here, 3 only there): this (70+74)/2, other (66+69)/2, Δ ((4)+(5))/2
    assert frame.loc["a", "seeds"] == 2
    assert frame.loc["a", "top1"] == 72.0 and frame.loc["a", "top1_other"] == 67.5
    assert frame.loc["a", "top1_delta"] == 4.5 and frame.loc["a", "many_delta"] == 2.5
    # b has no run on the other side: no number, never 0
    assert frame.loc["b", "seeds"] == 0 and np.isnan(frame.loc["b", "top1_delta"])
    out = paired.render_paired(frame.reset_index(), ["top1"], "lossless", "JPEG", {"a": "CE"})
    rows = [line for line in out["paired.md"].splitlines() if line.startswith("| CE") or line.startswith("| b")]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == ["CE", "a_jpeg", "72.0", "67.5", "+4.5", "2"]
    assert [c.strip() for c in rows[1].strip("|").split("|")] == ["b", "b_jpeg", "–", "–", "–", "0"]
    assert "All (lossless)" in out["paired.md"] and "Δ All" in out["html"]


@pytest.mark.parametrize("block, words", [
    ("[1, 2]", "must be a mapping"),
    ("{label: JPEG, suite: other, runs: {a: b}}", "missing keys ['results_root']"),
    ("{label: JPEG, suite: other, results_root: r, runs: {a: b}, colour: red}", "unknown keys ['colour']"),
    ("{label: JPEG, suite: other, results_root: r, runs: []}", "'runs' must map"),
])
def test_a_wrong_paired_block_names_what_is_wrong(tmp_path, block, words):
    suite = runner.load_suite(make_suite(tmp_path, report_block=f"report:\n  paired: {block}\n"))
    with pytest.raises(ValueError, match="paired") as err:
        report.report_options(suite)
    assert words in str(err.value)


def test_the_report_writes_the_paired_table_from_the_other_suites_runs(tmp_path):
    other_root, root = tmp_path / "kept", tmp_path / "results"
    write_runs(make_suite(tmp_path, name="other"), other_root, top1=(60.0, 50.0))
    block = ("report:\n  row_labels: {digits_ce: CE}\n  paired: {label: JPEG copy, this_label: lossless, "
             f"suite: other, results_root: {other_root}, runs: {{digits_ce: digits_ce}}}}\n")
    suite, _ = write_runs(make_suite(tmp_path, report_block=block), root, top1=(70.0, 80.0))
    report.build_suite_report(suite, root, tmp_path / "figs")
    csv = pd.read_csv(tmp_path / "figs" / "paired.csv").set_index("name")
    assert csv.loc["digits_ce", "top1_delta"] == 20.0 and csv.loc["digits_ce", "seeds"] == 2  # (10 + 30) / 2
    assert csv.loc["digits_ce", "many_delta"] == 20.0
    summary = (tmp_path / "figs" / "summary.md").read_text()
    assert "| CE " in summary.split("Paired runs:")[1] and "+20.0" in summary
    assert "Δ All" in (tmp_path / "figs" / "index.html").read_text()


def test_a_paired_report_without_the_other_runs_says_where_they_should_be(tmp_path):
    root = tmp_path / "results"
    block = (f"report:\n  paired: {{label: JPEG, suite: other, results_root: {tmp_path / 'nowhere'}, "
             "runs: {digits_ce: digits_ce}}\n")
    suite, _ = write_runs(make_suite(tmp_path, report_block=block), root)
    with pytest.raises(FileNotFoundError, match="keep_runs"):
        report.build_suite_report(suite, root, tmp_path / "figs")
    assert not (tmp_path / "figs").exists()  # nothing written
