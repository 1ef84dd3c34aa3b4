"""A real browser: JupyterLab on localhost, headless Chromium runs erm.ipynb (digits-LT, 1 epoch) cell by cell.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (the dev extra); .ci/run
installs them. Skipped, saying which is missing, where they are not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and selenium),
    reason="real-browser test needs chromium, chromedriver (apt-get install chromium chromium-driver) and selenium "
           f"(pip install -e '.[dev]'); missing: {[n for n, ok in (('chromium', CHROMIUM), ('chromedriver', DRIVER), ('selenium', selenium)) if not ok]}")

EDITS = {"epochs": 1, "max_steps_per_epoch": 3, "eval_every": 1, "device": "cpu", "tensorboard": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _project(tmp: Path) -> Path:
    """A project folder with the params and erm.ipynb, its parameters cell edited as a user would."""
    shutil.copytree(REPO / "params", tmp / "params")
    (tmp / "notebooks").mkdir()
    nb = nbformat.read(REPO / "notebooks" / "erm.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    for key, value in EDITS.items():
        lines = [f"{key}: {type(value).__name__} = {value!r}" if ln.startswith(f"{key}:") else ln for ln in lines]
    cell.source = "\n".join(lines)
    nbformat.write(nb, tmp / "notebooks" / "erm.ipynb")
    return tmp


def _start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    settings = root / ".lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')  # every cell in the DOM
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings")}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "lab.log", "w"))
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("JupyterLab did not start: " + (root / "lab.log").read_text()[-2000:])


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _menu(driver, menu: str, command: str) -> None:
    """Click a JupyterLab main-menu item (menu title, command id)."""
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
    next(i for i in items if i.text.strip() == menu).click()
    driver.find_element(By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]').click()


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_jupyterlab_runs_a_notebook_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By

    root, port, token = _project(tmp_path), _free_port(), "ltr-test-token"
    subprocess.run([sys.executable, "-c", "from ltr_core.runner import ensure_kernel; ensure_kernel()"], check=True)
    lab = _start_lab(root, port, token)
    driver = _browser()
    path = root / "notebooks" / "erm.ipynb"
    try:
        driver.get(f"http://127.0.0.1:{port}/lab/tree/notebooks/erm.ipynb?token={token}")
        status = lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")  # noqa: E731
        _wait(lambda: len(status()) > 5, 120, "the notebook to open")
        _wait(lambda: "Idle" in driver.page_source, 120, "the kernel to start")
        _menu(driver, "Run", "runmenu:run-all")
        prompts = lambda: [p.text for p in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]  # noqa: E731
        _wait(lambda: prompts() and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts()), 600,
              "every cell to finish")
        images = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        before = path.stat().st_mtime
        _menu(driver, "File", "docmanager:save")
        _wait(lambda: path.stat().st_mtime > before, 60, "the notebook to be saved")
    finally:
        driver.quit()
        lab.terminate()
        lab.wait(30)
    assert images, "no figure was displayed"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), [c.source[:40] for c in code if not c.execution_count]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    runs = list((root / "results" / "interactive").glob("digits_lt-erm-ce-*-s0/results.json"))
    assert len(runs) == 1, "the edited run writes under the project's results/ with a digest in its name"
