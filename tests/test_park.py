"""``ltr park`` / ``ltr unpark``: an unfinished run carried to another machine (its results/ gone) resumes
there and ends with the numbers of an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import killed_at_epoch, tiny_params
from test_integrity import _numbers
from ltr_core import cli, engine, park
from ltr_core.config import from_params
from ltr_core.methods import erm


def test_a_parked_run_resumes_on_an_empty_machine_to_the_uninterrupted_numbers(tmp_path, monkeypatch, capsys):
    params = tiny_params(tmp_path, epochs=4, name="carried")
    ref = from_params({**params, "results_root": str(tmp_path / "ref")})
    erm.run(ref)
    killed_at_epoch(params, 3, monkeypatch)
    results = Path(params["results_root"])
    dest = tmp_path / "repo" / "parked"
    assert cli.main(["park", "--to", str(dest), "--results-root", str(results)]) == 0
    assert "at epoch 2" in capsys.readouterr().out
    parked = dest / from_params(params).run_path().relative_to(results)
    assert sorted(p.name for p in (parked / "checkpoint").iterdir()) == ["LATEST", "epoch-000002"]
    assert not (parked / ".lock").exists() and not (parked / "tb").exists()
    shutil.rmtree(results)  # the next session's machine: no results/ at all
    assert cli.main(["unpark", str(dest), "--results-root", str(results)]) == 0
    res = erm.run(from_params(params))
    assert res["resumed_from_epoch"] == 2
    assert _numbers(from_params(params).run_path()) == _numbers(ref.run_path())
    # the run is complete now: parking again removes its parked copy, and unpark leaves the run alone
    assert cli.main(["park", "--to", str(dest), "--results-root", str(results)]) == 0
    assert "removed" in capsys.readouterr().out and not parked.exists()


def test_unpark_keeps_a_newer_checkpoint_and_archives_an_older_one(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, epochs=4, name="both")
    killed_at_epoch(params, 2, monkeypatch)  # checkpoint of epoch 1
    results = Path(params["results_root"])
    run = from_params(params).run_path()
    dest = tmp_path / "parked"
    park.park(results, dest)
    killed_at_epoch(params, 3, monkeypatch)  # here it went on to epoch 2
    assert "not older" in park.unpark(dest, results)[0]
    assert park.checkpoint_epoch(run) == 2
    park.park(results, dest)  # the parked copy is replaced by the newer state
    assert park.checkpoint_epoch(dest / run.relative_to(results)) == 2
    shutil.rmtree(run / "checkpoint" / "epoch-000002")
    (run / "checkpoint" / "LATEST").write_text("epoch-000001\n")  # an older copy here
    line = park.unpark(dest, results)[0]
    assert "unparked" in line and "moved to" in line
    assert park.checkpoint_epoch(run) == 2 and list((results / ".archive").rglob("LATEST"))


def test_a_torn_parked_copy_is_refused_with_the_fix(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, epochs=3, name="torn")
    killed_at_epoch(params, 2, monkeypatch)
    results, dest = Path(params["results_root"]), tmp_path / "parked"
    park.park(results, dest)
    parked = dest / from_params(params).run_path().relative_to(results)
    shutil.rmtree(parked / "checkpoint" / "epoch-000001")
    with pytest.raises(park.ParkError, match="park the run again"):
        park.unpark(dest, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()  # nothing written


def test_a_checkpoint_removed_during_the_copy_is_copied_again(tmp_path, monkeypatch):
    params = tiny_params(tmp_path, epochs=3, name="moving")
    killed_at_epoch(params, 2, monkeypatch)
    results = Path(params["results_root"])
    calls = []
    copytree = shutil.copytree

    def first_fails(src, dst, *a, **k):
        calls.append(src)
        if len(calls) == 1:
            raise FileNotFoundError(src)  # the trainer removed that epoch while we read it
        return copytree(src, dst, *a, **k)

    monkeypatch.setattr(park.shutil, "copytree", first_fails)
    (line,) = park.park(results, tmp_path / "parked")
    assert len(calls) == 2 and "at epoch 1" in line
    assert not list((tmp_path / "parked").rglob(".*.park-*"))
