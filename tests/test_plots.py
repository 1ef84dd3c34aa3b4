"""Every figure function runs headless on small fake data and saves PNG + PDF without Type 3 fonts."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ltr_core import plots  # noqa: E402

COUNTS = np.array([500, 300, 150, 101, 100, 60, 20, 19, 8, 5])  # many 4, medium 3, few 3


@pytest.fixture(autouse=True)
def style():
    plots.set_style()
    yield
    plt.close("all")


def check_saved(fig, tmp_path, name):
    paths = plots.save(fig, tmp_path / "figs", name)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert b"/Type3" not in pdf  # TrueType (Type 42) fonts only
    return paths


def test_style_rc():
    rc = matplotlib.rcParams
    assert rc["pdf.fonttype"] == 42 and rc["ps.fonttype"] == 42
    assert rc["savefig.bbox"] == "tight" and rc["savefig.dpi"] == 300
    assert not rc["axes.spines.top"] and not rc["axes.spines.right"]
    assert not rc["legend.frameon"] and not rc["text.usetex"]


def test_class_profile(tmp_path):
    fig = plots.plot_class_profile(COUNTS, class_names=[f"c{i}" for i in range(10)])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # 500 / 5 > 50
    assert sum(1 for line in ax.get_lines() if line.get_linestyle() == "-.") == 2
    assert {t.get_text() for t in ax.texts} == {"Many", "Medium", "Few"}
    check_saved(fig, tmp_path, "profile")


def test_class_profile_skips_missing_boundary(tmp_path):
    fig = plots.plot_class_profile(np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]))
    ax = fig.axes[0]
    assert sum(1 for line in ax.get_lines() if line.get_linestyle() == "-.") == 1  # no few classes
    assert {t.get_text() for t in ax.texts} == {"Many", "Medium"}
    flat = plots.plot_class_profile(np.array([30, 25, 22]))
    assert flat.axes[0].get_yscale() == "linear" and not flat.axes[0].get_lines()


def test_sample_grid(tmp_path):
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    fig = plots.plot_sample_grid(images, labels, ["a", "b", "c", "d"], per_class=5, max_classes=3,
                                 class_counts=[100, 50, 10, 5])
    assert len(fig.axes) == 15
    assert "a\n(n=100)" in [t.get_text() for t in fig.axes[0].texts]
    check_saved(fig, tmp_path, "grid")
    gray = plots.plot_sample_grid(np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 0, 1, 1]), None, per_class=2)
    assert len(gray.axes) == 4


def fake_collect_df():
    rows = []
    for method, base in (("erm", 60.0), ("la_loss", 65.0)):
        for seed in range(3):
            rows.append({"dataset": "cifar100_lt", "method": method, "name": "default", "seed": seed,
                         "many": base + 10 + seed, "medium": base + seed, "few": np.nan, "top1": base + 2 + seed})
    return pd.DataFrame(rows)


def test_shot_bars(tmp_path):
    fig = plots.plot_shot_bars(fake_collect_df())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Many", "Medium", "Few", "All"]
    assert len(ax.patches) == 6  # 2 methods x 3 groups; the empty Few group has no bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["erm", "la_loss"]
    check_saved(fig, tmp_path, "bars")
    two = pd.concat([fake_collect_df(), fake_collect_df().assign(dataset="x")])
    with pytest.raises(ValueError):
        plots.plot_shot_bars(two)


def test_per_class_vs_count(tmp_path):
    rng = np.random.default_rng(0)
    acc = {"erm": rng.uniform(0, 100, (3, 10)), "la": rng.uniform(0, 100, 10)}
    acc["la"][2] = np.nan  # a class without test samples
    fig = plots.plot_per_class_vs_count(acc, COUNTS)
    ax, twin = fig.axes
    assert twin.get_yscale() == "log"
    assert sum(1 for line in ax.get_lines() if line.get_linestyle() == "-.") == 2
    assert any(line.get_linestyle() == ":" for line in twin.get_lines())
    check_saved(fig, tmp_path, "per_class")


def test_per_class_vs_count_smooths_many_classes(tmp_path):
    counts = np.floor(1000 * 200.0 ** (-np.arange(1200) / 1199)).astype(int)
    fig = plots.plot_per_class_vs_count({"m": np.random.default_rng(0).uniform(0, 100, 1200)}, counts)
    mean_line = fig.axes[0].get_lines()[0].get_ydata()
    assert np.std(np.diff(mean_line)) < 5  # rolling mean, not raw noise
    check_saved(fig, tmp_path, "per_class_big")
