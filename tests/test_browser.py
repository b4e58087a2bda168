"""The workbook in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

Starts JupyterLab on a free localhost port over a temporary copy of the notebooks
(so autosave cannot rewrite tracked files), opens a notebook, runs all cells,
checks the saved result has no untagged errors, moves an ipywidgets slider and
checks the figure it drives was re-rendered. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = "01-quantization-fundamentals.ipynb"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("Chromium is missing in CI: `make test` installs Debian's chromium package as root")
    pytest.skip("Debian's chromium is not installed (make test installs it when run as root)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    nb_dir = work / "notebooks"
    shutil.copytree(ROOT / "notebooks", nb_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = work / "settings"
    for plugin, values in {
        # render every cell (no virtual scrolling) and start the notebook's kernel without asking
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        # no news or update checks: they reach for the network
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        f = settings / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    port = _free_port()
    env = dict(os.environ)
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        JUPYTER_CONFIG_DIR=str(work / "config"),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={nb_dir}",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        "--LabApp.news_url=",
        "--allow-root",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabServerApp.extension_manager=readonly",
        "--ServerApp.open_browser=False",
    ]
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("JupyterLab did not start:\n" + (work / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base, nb_dir
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _figure_src(page) -> str:
    img = page.locator(".jp-OutputArea-output img").last
    img.wait_for(state="visible", timeout=60_000)
    return img.get_attribute("src") or ""


def test_notebook_runs_and_widget_redraws_plot(lab, browser):
    base, nb_dir = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded")
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    # the workbook's own kernel, started and idle
    page.locator(".jp-Toolbar-kernelName", has_text="Python (qlab)").first.wait_for(timeout=90_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=90_000)

    # Clear the committed outputs, then run all cells through the menus, as a learner would.
    page.locator(".lm-MenuBar-itemLabel", has_text="Edit").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Clear Outputs of All Cells").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].every(p => !/\\d/.test(p.textContent))",
        timeout=30_000,
    )
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .map(p => p.textContent.trim());
            return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
        }""",
        timeout=240_000,
    )
    page.screenshot(path=str(ARTIFACTS / "01-after-run-all.png"), full_page=False)

    # Save and read back what the browser produced: every cell ran, no untagged error.
    page.keyboard.press("Control+s")
    time.sleep(2)
    nb = json.loads((nb_dir / NOTEBOOK).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c["execution_count"] for c in code)
    for c in code:
        errors = [o for o in c["outputs"] if o["output_type"] == "error"]
        assert not errors or "raises-exception" in c["metadata"].get("tags", []), errors[0]["ename"]

    # Move the 'bits' slider with the keyboard; the live figure must be re-rendered.
    slider = page.locator(".widget-slider", has_text="bits").first
    slider.scroll_into_view_if_needed()
    before = _figure_src(page)
    page.screenshot(path=str(ARTIFACTS / "01-widget-before.png"))
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(2):
        handle.press("ArrowLeft")  # 4 bits -> 2 bits
    page.wait_for_function(
        "(before) => { const imgs = document.querySelectorAll('.jp-OutputArea-output img');"
        " return imgs.length && imgs[imgs.length - 1].getAttribute('src') !== before; }",
        arg=before,
        timeout=30_000,
    )
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=30_000)
    time.sleep(1)  # the last comm message re-renders the image after the kernel went idle
    after = _figure_src(page)
    page.screenshot(path=str(ARTIFACTS / "01-widget-after.png"))
    readout = slider.locator(".widget-readout").first.inner_text()
    assert readout.strip() == "2"
    assert after != before
    png_before = base64.b64decode(before.split(",", 1)[1]) if "," in before else b""
    png_after = base64.b64decode(after.split(",", 1)[1]) if "," in after else b""
    assert png_before[:8] == png_after[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()
