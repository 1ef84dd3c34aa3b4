"""Suite reports: exactly the suite's runs, crash-consistent writes, LaTeX that compiles, index.html."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from ltr_core import cli, collect, latex, pivot, plots, report, runner, tables
from ltr_core.results import RunDir

SMOKE = REPO / "params" / "smoke" / "digits_ce.yaml"  # digits_lt / erm / digits_ce: resolving needs no data


def make_suite(tmp_path: Path, seeds=(0, 1), name="rep", report_block: str = "", extra_run: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    runs = f"  - params: {SMOKE}\n    seeds: {list(seeds)}\n" + (f"  - params: {SMOKE}\n    set: {extra_run}\n"
                                                               if extra_run else "")
    path.write_text(f"name: {name}\nruns:\n{runs}{report_block}")
    return path


def fake_results(run: collect.ExpectedRun, seed: int, top1: float, **extra) -> dict:
    name = run.run_id.split("-", 2)[2].rsplit("-s", 1)[0]  # <dataset>-<method>-<name>-s<seed>
    res = {"run_id": run.run_id, "dataset": "digits_lt", "method": "erm", "seed": seed, "name": name,
           "config_hash": run.config_hash, "status": "complete",
           "metrics": {"top1": top1, "many": top1 + 5, "medium": top1, "few": top1 - 20, "ece": 3.0},
           "class_counts": [150, 60, 10], "per_class": [top1 + 5, top1, top1 - 20],
           "shot_groups": {"many": [0], "medium": [1], "few": [2]}, "train_seconds": 1.0,
           "images_per_second": 10.0, "device": "cpu", "versions": {"python": "3", "torch": "2", "ltr_core": "x"}}
    res.update(extra)
    return res


def write_runs(suite_path: Path, root: Path, overrides: dict | None = None, top1=(70.0, 80.0, 60.0, 50.0, 40.0)):
    suite = runner.load_suite(suite_path)
    expected = collect.suite_expected_runs(suite, {"results_root": str(root), **(overrides or {})})
    for i, run in enumerate(expected):
        RunDir(run.path).write_results(fake_results(run, i, top1[i]))
    return suite, expected


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- A: exactly the runs of the suite ---------------------------------------------------------------


def test_archived_and_stray_runs_are_never_counted(tmp_path):
    root = tmp_path / "results"
    suite, expected = write_runs(make_suite(tmp_path), root)
    # `ltr run --force` moved an older copy of seed 0 aside inside the suite folder; a stray run lies next to it
    archived = expected[0].path.with_name(expected[0].path.name + ".old-20250101-120000")
    shutil.copytree(expected[0].path, archived)
    RunDir(archived).write_results(fake_results(expected[0], 0, 10.0))
    stray = root / "rep" / "digits_lt-erm-old_name-s0"
    RunDir(stray).write_results(fake_results(collect.ExpectedRun(stray.name, stray, "h"), 0, 99.0, name="digits_ce"))
    out = report.build_suite_report(suite, root, tmp_path / "figs")
    assert sorted(out["runs"]["run_id"]) == sorted(r.run_id for r in expected)
    md = (tmp_path / "figs" / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| erm")]
    assert len(rows) == 1 and "75.0 ± 7.1" in rows[0]  # the mean of 70 and 80 only
    assert rows[0].rstrip(" |").endswith(" 2")  # Seeds 2, not 3 (with the archived copy) or 4
    assert md.startswith("Runs: 2 of 2 expected runs of suite rep counted")
    assert "old-20250101-120000: archived" in md and "digits_lt-erm-old_name-s0: stray" in md
    manifest = json.loads((tmp_path / "figs" / "report.json").read_text())
    assert {p["reason"] for p in manifest["collection"]["not_counted"]} == {"archived", "stray"}
    (root / ".archive" / "rep").mkdir(parents=True)  # results.archive_run_dir's place for runs moved aside
    shutil.copytree(expected[1].path, root / ".archive" / "rep" / "x-20250101-120000")
    # the ad-hoc collector (method notebooks) leaves archives out too; it does take the stray run
    assert len(collect.collect(root)) == 3 and len(collect.collect(root / "rep")) == 3


def test_missing_stale_unreadable_incomplete_runs_are_listed_not_counted(tmp_path):
    root = tmp_path / "results"
    suite, expected = write_runs(make_suite(tmp_path, seeds=(0, 1, 2, 3, 4)), root)
    stale, truncated, running, missing = expected[1], expected[2], expected[3], expected[4]
    RunDir(stale.path).write_results(fake_results(stale, 1, 10.0, config_hash="0123456789abcdef"))
    text = (truncated.path / "results.json").read_text()
    (truncated.path / "results.json").write_text(text[: len(text) // 2])  # cut short
    RunDir(running.path).write_results(fake_results(running, 3, 10.0, status="running"))
    shutil.rmtree(missing.path)
    out = report.build_suite_report(suite, root, tmp_path / "figs")
    assert list(out["runs"]["run_id"]) == [expected[0].run_id]
    reasons = {p.run_id: p.reason for p in out["collection"].problems}
    assert reasons == {stale.run_id: "stale", truncated.run_id: "unreadable", running.run_id: "incomplete",
                       missing.run_id: "missing"}
    md_top = (tmp_path / "figs" / "summary.md").read_text().split("\n\n")[0]
    page = (tmp_path / "figs" / "index.html").read_text()
    assert md_top.startswith("Runs: 1 of 5 expected runs")
    for run_id, reason in reasons.items():
        assert f"{run_id}: {reason}" in md_top and f"{run_id}: {reason}" in page


def test_malformed_results_is_an_error_naming_the_file_before_anything_is_written(tmp_path):
    root = tmp_path / "results"
    suite, expected = write_runs(make_suite(tmp_path), root)
    report.build_suite_report(suite, root, tmp_path / "figs")
    before = snapshot(tmp_path / "figs")
    bad = expected[1].path / "results.json"
    res = json.loads(bad.read_text())
    res["per_class"] = res["per_class"][:2]  # parses, but no longer one value per class
    res["metrics"]["top1"] = "high"
    bad.write_text(json.dumps(res))
    with pytest.raises(collect.MalformedResults, match=re.escape(str(bad))) as err:
        report.build_suite_report(suite, root, tmp_path / "figs")
    assert "metrics.top1" in str(err.value) and "per_class has 2 entries" in str(err.value)
    assert snapshot(tmp_path / "figs") == before


def test_a_report_that_fails_half_way_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    root = tmp_path / "results"
    suite, expected = write_runs(make_suite(tmp_path), root)
    report.build_suite_report(suite, root, tmp_path / "figs")
    before = snapshot(tmp_path / "figs")
    RunDir(expected[0].path).write_results(fake_results(expected[0], 0, 20.0))  # new numbers ...
    calls = []

    def failing_render(fig, name):  # ... but the second figure fails (after the tables were computed)
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_render(fig, name)

    real_render = plots.render
    monkeypatch.setattr(plots, "render", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        report.build_suite_report(suite, root, tmp_path / "figs")
    assert snapshot(tmp_path / "figs") == before
    monkeypatch.setattr(plots, "render", real_render)
    report.build_suite_report(suite, root, tmp_path / "figs")
    assert "50.0 ± 42.4" in (tmp_path / "figs" / "summary.md").read_text()  # top-1 20 and 80


def test_a_report_removes_only_the_files_its_previous_run_wrote(tmp_path):
    root = tmp_path / "results"
    suite, _ = write_runs(make_suite(tmp_path), root)
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "dataset_digits_lt_profile.png").write_bytes(b"\x89PNG profile")  # written by dataset.ipynb
    report.build_suite_report(suite, root, figs)
    (figs / "report.json").write_text(json.dumps({"files": [*json.loads((figs / "report.json").read_text())["files"],
                                                            "shot_bars_gone.png"]}))
    (figs / "shot_bars_gone.png").write_bytes(b"old")
    report.build_suite_report(suite, root, figs)
    assert not (figs / "shot_bars_gone.png").exists() and (figs / "dataset_digits_lt_profile.png").is_file()
    assert 'src="dataset_digits_lt_profile.png"' in (figs / "index.html").read_text()


# -- B: where a report goes, index.html --------------------------------------------------------------


def test_a_report_of_runs_with_overrides_never_goes_to_the_committed_figures(tmp_path):
    root = tmp_path / "results"
    suite_path = make_suite(tmp_path, name="quickstart")  # the name of a committed figures folder
    suite, expected = write_runs(suite_path, root, {"epochs": 1})
    digest = report.override_digest({"epochs": 1, "results_root": "x", "device": "cpu"})
    assert len(digest) == 6 and digest == report.override_digest({"epochs": 1}) != report.override_digest({})
    assert all(r.run_id != f"digits_lt-erm-digits_ce-s{i}" for i, r in enumerate(expected))  # runs renamed
    assert report.report_dir(suite) == Path("figures/quickstart")
    where = report.report_dir(suite, {"epochs": 1}, results_root=root)
    assert where == root / f"quickstart-{digest}" / "report"
    committed = snapshot(REPO / "figures" / "quickstart")
    out = report.build_suite_report(suite, root, overrides={"epochs": 1})
    assert out["files_dir"] == where and len(out["runs"]) == 2 and (where / "summary.tex").is_file()
    assert snapshot(REPO / "figures" / "quickstart") == committed
    assert report.report_dir(suite, {"epochs": 1}, out=tmp_path / "o") == tmp_path / "o"


def test_index_html_shows_tables_and_every_figure_with_relative_links(tmp_path):
    root = tmp_path / "results"
    suite, _ = write_runs(make_suite(tmp_path), root)
    report.build_suite_report(suite, root, tmp_path / "figs")
    page = (tmp_path / "figs" / "index.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert pngs and all(f'<img src="{p}"' in page for p in pngs)
    assert "<table>" in page and "<strong>75.0 ± 7.1</strong>" in page
    assert not re.search(r"(src|href)=\"(https?:|/)", page) and "http" not in page.lower()


def test_cli_report_prints_what_it_counted_and_strict_fails(tmp_path, capsys):
    root = tmp_path / "results"
    suite_path = make_suite(tmp_path)
    _, expected = write_runs(suite_path, root)
    shutil.rmtree(expected[1].path)
    args = ["report", str(suite_path), "--results-root", str(root), "--out", str(tmp_path / "o")]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Runs: 1 of 2 expected runs" in printed and f"{expected[1].run_id}: missing" in printed
    assert str(tmp_path / "o" / "index.html") in printed and (tmp_path / "o" / "summary.md").is_file()
    assert cli.main([*args, "--strict"]) == 1


# -- B: LaTeX that compiles ---------------------------------------------------------------------------


def test_latex_escape():
    assert latex.escape("many > 100 % τ → 1 ± 2_a & #b {c} ~ ^ \\ <") == (
        r"many $>$ 100 \% $\tau$ $\rightarrow$ 1 $\pm$ 2\_a \& \#b \{c\} \textasciitilde{} \textasciicircum{} "
        r"\textbackslash{} $<$")
    assert latex.escape("Café — β≥2").isascii() and latex.escape("–") == "--"


def _compile_ok(path: Path, max_overfull_pt: float = 3.0) -> None:
    result = latex.compile_check(path)
    assert result["ok"], f"{path}: {result['errors']}"
    assert max(result["overfull_pt"], default=0) <= max_overfull_pt, f"{path}: overfull {result['overfull_pt']}"
    assert path.read_text().isascii(), path


needs_pdflatex = pytest.mark.skipif(shutil.which("pdflatex") is None,
                                    reason="pdflatex not installed (Debian: apt-get install texlive-latex-base "
                                           "texlive-latex-recommended; .ci/run does it)")

NASTY = """report:
  title: "Wide & odd: top-1 (%) for many > 100 and few < 20, τ → ∞, #1 of $2 ~ {x}_y ^ z"
  metrics: [many, medium, few, top1, ece, mean_per_class]
  row_labels:
    digits_ce: "LA loss (τ = 1) → cRT & BS_50% > CE, very long label text that makes the table wide"
    digits_ce-DIGEST: '#2: ~ {x}^y \\ε'
  published:
    - {dataset: digits_lt, method: "CB-Focal, paper [R] (β = 0.999, γ = 1) — 100%", top1: 74.57}
"""


@needs_pdflatex
def test_every_tex_a_report_writes_compiles_and_fits_the_page(tmp_path):
    root = tmp_path / "results"
    plain = runner.load_suite(make_suite(tmp_path, seeds=(0, 1, 2), extra_run="{lr: 0.1}"))
    other = collect.suite_expected_runs(plain, {"results_root": str(root)})[-1].run_id  # digits_lt-erm-<name>-s0
    suite_path = make_suite(tmp_path, seeds=(0, 1, 2), extra_run="{lr: 0.1}",
                            report_block=NASTY.replace("digits_ce-DIGEST", other.split("-", 2)[2][:-3]))
    suite, expected = write_runs(suite_path, root)
    for i, run in enumerate(expected):  # one more metric column: a wider table
        res = json.loads((run.path / "results.json").read_text())
        res["metrics"]["mean_per_class"] = 60.0 + i
        RunDir(run.path).write_results(res)
    report.build_suite_report(suite, root, tmp_path / "figs")
    texs = sorted((tmp_path / "figs").glob("*.tex"))
    assert [p.name for p in texs] == ["summary.tex"]
    assert r"\#2: \textasciitilde{} \{x\}\textasciicircum{}y \textbackslash{}$\varepsilon$" in texs[0].read_text()
    for tex in texs:
        _compile_ok(tex)
    # a pivot (column-block) report too: summary_<dataset>.tex and summary_by_run.tex
    piv = runner.Suite(name="piv", path=tmp_path / "piv.yaml", report={
        "columns_by": "imbalance_ratio", "metrics": ["many", "medium", "few", "top1"],
        "row_labels": {"digits_ce": "τ-norm (oracle τ) & 50% > x"},
        "published": [{"dataset": "digits_lt", "method": "CE, paper_1 (IR > 10)", "imbalance_ratio": 25, "top1": 1.0}]})
    (root / "piv").mkdir()
    for run in expected[:3]:
        shutil.copytree(run.path, root / "piv" / run.path.name)
        RunDir(root / "piv" / run.path.name).write_config({"imbalance_ratio": 25.0}, "h", run.run_id)
    report.build_suite_report(piv, root, tmp_path / "pfigs", runs=collect.folder_expected_runs(root / "piv"))
    texs = sorted((tmp_path / "pfigs").glob("*.tex"))
    assert [p.name for p in texs] == ["summary_by_run.tex", "summary_digits_lt.tex"]
    for tex in texs:
        _compile_ok(tex)


@needs_pdflatex
@pytest.mark.parametrize("tex", sorted((REPO / "figures").glob("**/*.tex")),
                         ids=lambda p: str(p.relative_to(REPO / "figures")))
def test_committed_tex_compiles_and_fits_the_page(tex):
    _compile_ok(tex)


@needs_pdflatex
def test_a_very_wide_table_is_shrunk_to_the_text_width(tmp_path):
    columns = ["Method"] + [f"Metric {i}" for i in range(24)]
    rows = [["a method with a long name"] + ["100.0 ± 10.0"] * 24]
    path = tmp_path / "wide.tex"
    path.write_text(latex.table(columns, rows, [[False] * 25], n_label=1, caption="wide", label="tab:wide"))
    _compile_ok(path, max_overfull_pt=0.5)


# -- C: committed tables re-render from their CSVs (no training) -----------------------------------------


def _cells(md: str) -> list[list[str]]:
    """The cells of the first table of ``md`` (summary.md may go on with a paired table)."""
    lines = md.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]
            if not line.startswith("|:") and not line.startswith("|-")]


COMMITTED = [s for s in map(runner.load_suite, sorted((REPO / "params" / "suites").glob("*.yaml")))
             if (REPO / report.report_dir(s) / "summary.csv").is_file()]


def test_the_committed_reports_are_found():
    assert {"quickstart", "cifar10_lt_baselines_cpu"} <= {s.name for s in COMMITTED}


@pytest.mark.parametrize("suite", COMMITTED, ids=lambda s: s.name)
def test_committed_tables_rerender_from_their_csv(suite, tmp_path):
    committed = REPO / report.report_dir(suite)
    single = "summary_by_run" if suite.report.get("columns_by") else "summary"
    opts = report.report_options(suite)
    caps = report.captions(suite.name, opts["title"], opts["metrics"])
    frames = tables.frames_from_csv(pd.read_csv(committed / f"{single}.csv"))
    md = tables.render_frames(*frames, caps["summary"], "tab:x")["md"]
    assert _cells(md) == _cells((committed / f"{single}.md").read_text())  # the same numbers, marks and labels
    if opts["columns_by"]:
        md = pivot.render_pivot_tables(pivot.pivots_from_csv(pd.read_csv(committed / "summary.csv")), "summary",
                                       caps["pivot"], "tab:x")["summary.md"]
        assert _cells(md) == _cells((committed / "summary.md").read_text())
    shutil.copytree(committed, tmp_path / "copy")
    written = report.rerender_tex(suite, tmp_path / "copy")
    def body(path):
        return [line for line in path.read_text().splitlines() if not line.startswith("%")]

    for path in written:  # the committed .tex is what the renderer makes of the committed numbers
        assert body(path) == body(committed / path.name), path.name


def test_keep_runs_copies_small_outputs_and_the_report_rebuilds_from_them(tmp_path):
    """keep_runs: the counted runs' results.json / per_class.csv / config.yaml go to <report>/runs/, and a
    report built from that folder alone (a fresh clone: no results/) gives the same table."""
    root = tmp_path / "results"
    suite, expected = write_runs(make_suite(tmp_path, report_block="report:\n  keep_runs: true\n"), root)
    for run in expected:
        (run.path / "per_class.csv").write_text("class,accuracy\n0,1\n")
        (run.path / "logits.npz").write_bytes(b"big")
    report.build_suite_report(suite, root, tmp_path / "figs")
    kept = tmp_path / "figs" / "runs"
    assert sorted(p.name for p in (kept / "rep").iterdir()) == sorted(r.run_id for r in expected)
    assert sorted(p.name for p in (kept / "rep" / expected[0].run_id).iterdir()) == ["per_class.csv", "results.json"]
    shutil.rmtree(root)
    again = report.build_suite_report(suite, kept, tmp_path / "figs2")
    assert (tmp_path / "figs2" / "summary.csv").read_text() == (tmp_path / "figs" / "summary.csv").read_text()
    assert sorted(again["runs"]["run_id"]) == sorted(r.run_id for r in expected)
    report.build_suite_report(suite, kept, tmp_path / "figs")  # rebuilding in place copies nothing onto itself
    assert (kept / "rep" / expected[0].run_id / "results.json").is_file()


def test_notes_are_listed_under_the_tables(tmp_path):
    """report.notes (why a row misses its published number): a list under the table in summary.md and
    index.html (escaped)."""
    root = tmp_path / "results"
    block = 'report:\n  notes: ["CE misses by 4.3: JPEG q75 <4:2:0> & one seed"]\n'
    suite, _ = write_runs(make_suite(tmp_path, report_block=block), root)
    report.build_suite_report(suite, root, tmp_path / "figs")
    md = (tmp_path / "figs" / "summary.md").read_text()
    assert md.rstrip().endswith("Notes:\n\n- CE misses by 4.3: JPEG q75 <4:2:0> & one seed")
    assert "<li>CE misses by 4.3: JPEG q75 &lt;4:2:0&gt; &amp; one seed</li>" in (tmp_path / "figs" / "index.html").read_text()


def test_best_evaluated_top1_reads_metrics_jsonl_and_survives_a_torn_line(tmp_path):
    from ltr_core.collect import best_evaluated_top1

    assert np.isnan(best_evaluated_top1(tmp_path))  # no metrics.jsonl
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0}\n{"epoch": 9, "top1": 41.7}\n'
                                            '{"epoch": 19, "top1": 48.66}\n{"epoch": 29, "top1": 45.0}\n{"epoch": 3')
    assert best_evaluated_top1(tmp_path) == 48.66


def test_evaluated_epochs_keep_the_last_record_of_an_epoch_and_skip_untested_ones(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 0, "train_loss": 1.0}\n{"epoch": 9, "top1": 41.7, "medium": 3.0}\n'
        '{"epoch": 19, "top1": 40.0}\n{"epoch": 19, "top1": 48.66, "few": null}\n[1, 2]\n{"epoch": 29, "top')
    got = collect.evaluated_epochs(tmp_path)
    assert [(r["epoch"], r["top1"]) for r in got] == [(9, 41.7), (19, 48.66)]
    assert collect.evaluated_epochs(tmp_path / "missing") == []


def test_eval_curves_average_seeds_on_shared_epochs_and_leave_stage_two_out(tmp_path):
    root = tmp_path / "results"
    suite, expected = write_runs(make_suite(tmp_path, seeds=(0, 1, 2)), root)
    logs = [{9: 40.0, 19: 50.0, 29: 60.0, 39: 61.0}, {9: 44.0, 19: 54.0, 29: 62.0}, {9: 1.0, 19: 2.0, 29: 3.0}]
    for run, log in zip(expected, logs):
        (run.path / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "top1": t, "medium": t - 10, "few": None}) + "\n" for e, t in log.items()))
    res = RunDir(expected[2].path).read_results()
    RunDir(expected[2].path).write_results({**res, "stage1": "digits_lt-erm-x-s0"})  # a cRT-like stage-2 run
    df = collect.collect_suite(expected, root / "rep", "rep").frame
    curves = report.eval_curves(df)
    assert list(curves) == ["erm"]
    c = curves["erm"]
    assert c["epoch"] == [9, 19, 29] and c["top1"] == [42.0, 52.0, 61.0] and c["medium"] == [32.0, 42.0, 51.0]
    assert all(np.isnan(c["few"])) and all(np.isnan(c["many"]))
    fig = plots.plot_eval_curves(curves)
    assert [ax.get_ylabel() for ax in fig.axes] == ["test All (%)", "test Medium (%)"]  # Few is empty: no panel
    assert fig.axes[0].lines[0].get_xdata().tolist() == [10, 20, 30]  # epochs completed
    report.build_suite_report(suite, root, tmp_path / "figs")
    assert (tmp_path / "figs" / "eval_curves_digits_lt.png").is_file()
    for run in expected[:2]:  # two evaluated epochs are no curve: no figure, the old one removed
        (run.path / "metrics.jsonl").write_text('{"epoch": 9, "top1": 1.0}\n{"epoch": 19, "top1": 2.0}\n')
    assert report.eval_curves(collect.collect_suite(expected, root / "rep", "rep").frame) == {}
    report.build_suite_report(suite, root, tmp_path / "figs")
    assert not (tmp_path / "figs" / "eval_curves_digits_lt.png").exists()
