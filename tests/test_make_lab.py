"""`make lab`, the README's main command, run exactly as a learner runs it, and /lab fetched from it.

As root (containers, many cloud images) JupyterLab refuses to start without --allow-root: `make lab`
adds it and says so. As an ordinary user it starts without. Both are tested when the tests run as root
(the ordinary user is `nobody`, through setpriv); as an ordinary user, that user's case is tested.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_make_lab(tmp_path, as_nobody: bool):
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "IPYTHONDIR": str(home / "ipython"),
           "BROWSER": "true"}  # the command line is make's own; the environment keeps the test off the real home
    cmd = ["make", "-s", "lab", f"PORT={port}"]
    if as_nobody:
        shutil.chown(home, "nobody", "nogroup" if _group_exists("nogroup") else "nobody")
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup" if _group_exists("nogroup") else "--regid=nobody",
               "--clear-groups", "--"] + cmd
    log = open(tmp_path / "lab.log", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, url = time.time() + 120, None
        while url is None:
            log.seek(0)
            text = log.read()
            m = re.search(rf"http://(?:127\.0\.0\.1|localhost):{port}/lab\?token=(\w+)", text)
            if m:
                url = f"http://127.0.0.1:{port}/lab?token={m.group(1)}"
            elif proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"make lab did not start (exit {proc.poll()}):\n{text[-3000:]}")
            else:
                time.sleep(0.5)
        with urllib.request.urlopen(url, timeout=30) as r:
            page = r.read().decode()
        log.seek(0)
        return r.status, page, log.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_make_lab_serves_jupyterlab_as_this_user(tmp_path):
    status, page, log = _run_make_lab(tmp_path, as_nobody=False)
    assert status == 200 and "JupyterLab" in page
    if os.geteuid() == 0:
        assert "running as root, so starting JupyterLab with --allow-root" in log
    else:
        assert "--allow-root" not in log


def _nobody_can_run_the_venv() -> str | None:
    """Why nobody cannot run the workbook's Python here, or None. (On these machines the interpreter the venv
    links to may live under /root, mode 700: a learner's own machine has their own Python.)"""
    python = os.path.realpath(ROOT / ".venv" / "bin" / "python")
    group = "--regid=nogroup" if _group_exists("nogroup") else "--regid=nobody"
    # through a shell, as make runs it: the interpreter is found through the script's #! line
    script = f"{ROOT / '.venv' / 'bin' / 'jupyter'} --version"
    rc = subprocess.call(["setpriv", "--reuid=nobody", group, "--clear-groups", "--", "sh", "-c", script],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc == 0:
        return None
    return f"user nobody cannot run the venv's Python {python} (a directory on its path is private)"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to act as nobody")
def test_make_lab_serves_jupyterlab_as_an_ordinary_user(tmp_path):
    reason = _nobody_can_run_the_venv()
    if reason:
        pytest.skip(reason)
    tmp_path.chmod(0o755)
    status, page, log = _run_make_lab(tmp_path, as_nobody=True)
    assert status == 200 and "JupyterLab" in page and "--allow-root" not in log
