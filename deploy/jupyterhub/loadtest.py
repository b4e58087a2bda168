"""Drive the workshop hub the way a class uses it: learners log in, get their own server, run a notebook.

Used by ``tests/test_hub.py`` (who gets in, learners kept apart, a dead server reported, a small load) and by
``benchmarks/bench_hub.py`` (the capacity table of ``docs/instructor-guide.md``). Everything is real: the hub is
``jupyterhub`` with ``jupyterhub_config.py`` from this folder, its proxy the pinned ``configurable-http-proxy``,
each learner a system user whose server runs as that user; notebooks run cell by cell through the Jupyter REST
and kernel (websocket) APIs, as JupyterLab runs them. Needs root (to create users and to switch to them) and
binds to 127.0.0.1 only.

The only addition to the deployed configuration is a service token for the driver (``TEST_CONFIG``): it may
manage users, servers and tokens, as an instructor's admin account may.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

import requests
import websocket

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "jupyterhub_config.py"
VENV_BIN = pathlib.Path(sys.executable).parent
TEST_CONFIG = """\
import os
c = get_config()  # noqa: F821
load_subconfig({config!r})  # noqa: F821
c.JupyterHub.services = [{{"name": "qlab-driver", "api_token": os.environ["QLAB_DRIVER_TOKEN"]}}]
c.JupyterHub.load_roles = [{{"name": "qlab-driver", "services": ["qlab-driver"],
                             "scopes": ["admin:users", "admin:servers", "tokens", "list:users"]}}]
"""

__all__ = [
    "Hub",
    "HubError",
    "learners",
    "reachable",
    "kernel_cache",
    "run_notebook",
    "run_code",
    "load_round",
    "mem_available",
    "rss_by_user",
]


class HubError(RuntimeError):
    """The hub or a learner's server did not do what was asked in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def learners(names: list[str]):
    """System users for ``names`` (created if missing, with a home); the ones created here are removed after."""
    created = []
    try:
        for name in names:
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", name], check=True)
                created.append(name)
        yield names
    finally:
        for name in created:
            subprocess.run(["pkill", "-KILL", "-u", name], check=False)
            time.sleep(0.2)
            subprocess.run(["userdel", "--remove", name], check=False, stderr=subprocess.DEVNULL)
            shutil.rmtree(f"/tmp/torchinductor_{name}", ignore_errors=True)


def _blocking_dirs(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    """Directories on the way to ``paths`` that other users cannot search (no ``o+x``)."""
    out = []
    for p in paths:
        for d in [*reversed(pathlib.Path(os.path.realpath(p)).parents), pathlib.Path(os.path.realpath(p))]:
            if d.is_dir() and not d.stat().st_mode & stat.S_IXOTH and d not in out:
                out.append(d)
    return out


@contextlib.contextmanager
def reachable(paths: list[pathlib.Path] | None = None):
    """Let other users *search* (not list) the directories on the way to the hub's Python and this clone.

    A learner's server runs the hub's interpreter as the learner; with Python under ``/root`` (mode 700) it
    could not start. The modes are restored afterwards. A real hub installs Python where learners can reach it.
    """
    paths = paths or [pathlib.Path(sys.executable), pathlib.Path(sys.prefix), REPO]
    changed = [(d, d.stat().st_mode) for d in _blocking_dirs(paths)]
    try:
        for d, mode in changed:
            d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        yield [d for d, _ in changed]
    finally:
        for d, mode in changed:
            d.chmod(stat.S_IMODE(mode))


def kernel_cache(dest: pathlib.Path) -> pathlib.Path:
    """A world-readable copy of qlab's built int8 kernels (built here if missing): learners load, never compile."""
    code = "from qlab.kernels import _build; print(_build.build_dir())"
    built = pathlib.Path(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    )
    env = {**os.environ, "QLAB_CACHE_DIR": str(dest)}
    dest.mkdir(parents=True, exist_ok=True)
    if built.is_dir() and not (dest / built.name).exists():
        shutil.copytree(built, dest / built.name, ignore=shutil.ignore_patterns("lock", "*.o", "*.ninja*"))
    subprocess.run([sys.executable, "-m", "qlab.kernels"], env=env, check=True, capture_output=True)
    for root, dirs, files in os.walk(dest):
        for n in dirs + files:
            p = pathlib.Path(root, n)
            p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
    dest.chmod(dest.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
    return dest


class Hub:
    """The deployed hub, started on a free localhost port with its state in ``state``; stop() ends it."""

    def __init__(self, roster: list[str], state: pathlib.Path, admins: tuple[str, ...] = (), threads: int = 1):
        self.roster, self.admins, self.state = list(roster), tuple(admins), pathlib.Path(state)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)
        self.admin_password = secrets.token_urlsafe(24)
        self.driver_token = secrets.token_hex(32)
        self.threads = threads
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Hub:
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)
        (self.state / "roster.txt").write_text("\n".join(self.roster) + "\n")
        cfg = self.state / "hub_driver_config.py"
        cfg.write_text(TEST_CONFIG.format(config=str(CONFIG)))
        env = {
            **os.environ,
            "QLAB_WORKSHOP_PASSWORD": self.password,
            "QLAB_ADMIN_PASSWORD": self.admin_password,
            "QLAB_HUB_ROSTER": str(self.state / "roster.txt"),
            "QLAB_HUB_ADMINS": ",".join(self.admins),
            "QLAB_HUB_PORT": str(self.port),
            "QLAB_HUB_STATE": str(self.state),
            "QLAB_MAX_THREADS": str(self.threads),
            "QLAB_DRIVER_TOKEN": self.driver_token,
            "QLAB_CACHE_DIR": str(kernel_cache(self.state / "kernel-cache")),
        }
        env.setdefault("CONFIGPROXY_AUTH_TOKEN", secrets.token_hex(32))
        self.log = open(self.state / "hub.log", "ab")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(cfg)],
            cwd=self.state,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubError(f"the hub exited with status {self.proc.returncode}: see {self.state / 'hub.log'}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        raise HubError(f"the hub did not answer within {timeout:.0f} s: see {self.state / 'hub.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            for user in self.roster + list(self.admins):
                with contextlib.suppress(requests.RequestException):
                    self.api("DELETE", f"/users/{user}/server", timeout=30)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, method: str, path: str, token: str | None = "driver", **kw) -> requests.Response:
        """A hub REST call (``/hub/api`` + path) with the driver's token, a learner's, or none."""
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {self.driver_token if token == 'driver' else token}"
        kw.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kw)

    def token(self, user: str) -> str:
        """A token for ``user``, as they would make one on the hub's token page (their own scopes only)."""
        r = self.api("POST", f"/users/{user}/tokens", json={"note": "qlab load test", "expires_in": 7200})
        if r.status_code != 201:
            raise HubError(f"token for {user}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()["token"]

    def login(self, user: str, password: str) -> bool:
        """The login form, as a browser submits it: True if the hub let ``user`` in."""
        s = requests.Session()
        s.get(f"{self.url}/hub/login", timeout=30)
        r = s.post(
            f"{self.url}/hub/login",
            data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf", "")},
            allow_redirects=False,
            timeout=30,
        )
        return r.status_code == 302 and "jupyterhub-hub-login" in r.cookies

    def start_server(self, user: str, timeout: float = 120) -> float:
        """Start ``user``'s server (the spawner copies the notebooks at first start); seconds until ready."""
        t0 = time.monotonic()
        r = self.api("POST", f"/users/{user}/server")
        if r.status_code not in (201, 202, 400):  # 400: already running
            raise HubError(f"start {user}'s server: HTTP {r.status_code} {r.text[:200]}")
        while time.monotonic() - t0 < timeout:
            server = self.api("GET", f"/users/{user}").json().get("servers", {}).get("", {})
            if server.get("ready"):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise HubError(f"{user}'s server was not ready within {timeout:.0f} s: see {self.state / 'hub.log'}")

    def ensure_server(self, user: str, token: str) -> None:
        """``user``'s server answering its own API: started, or stopped and started again if it died."""
        with contextlib.suppress(requests.RequestException):
            r = requests.get(
                f"{self.url}/user/{user}/api/status",
                headers={"Authorization": f"token {token}"},
                timeout=10,
                allow_redirects=False,
            )
            if r.status_code == 200:
                return
        self.api("DELETE", f"/users/{user}/server", timeout=60)
        t0 = time.monotonic()
        while self.api("GET", f"/users/{user}").json().get("servers") and time.monotonic() - t0 < 60:
            time.sleep(0.5)
        self.start_server(user)

    def server_alive(self, user: str) -> bool:
        with contextlib.suppress(requests.RequestException, ValueError):
            servers = self.api("GET", f"/users/{user}", timeout=10).json().get("servers", {})
            return bool(servers.get("", {}).get("ready"))
        return False


def _execute(ws, code: str, session: str, deadline: float, alive, out: list[str] | None = None) -> list[str]:
    """One execute_request on the kernel channels; the names of the errors it raised (empty: none).

    What it prints goes to ``out``; the ``deadline`` (``time.monotonic()``) and a server that dies end the wait.
    """
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": "", "version": "5.3"}
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    ws.send(
        json.dumps(
            {
                "channel": "shell",
                "header": header,
                "parent_header": {},
                "metadata": {},
                "buffers": [],
                "content": content,
            }
        )
    )
    errors, replied, idle = [], False, False
    while not (replied and idle):
        if time.monotonic() > deadline:
            raise TimeoutError("the wall-clock cap was reached")
        try:
            msg = json.loads(ws.recv())
        except websocket.WebSocketTimeoutException:
            if not alive():
                raise HubError("the learner's server died") from None
            continue
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            raise HubError("the learner's server died (the kernel connection closed)") from None
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, body = msg["header"]["msg_type"], msg["content"]
        if kind == "error":
            errors.append(body["ename"])
            if out is not None:
                out.append(f"{body['ename']}: {body['evalue']}\n")
        elif kind == "stream" and out is not None:
            out.append(body["text"])
        elif kind == "status" and body["execution_state"] == "idle":
            idle = True
        elif kind == "execute_reply":
            replied = True
    return errors


@contextlib.contextmanager
def _kernel(hub: Hub, user: str, token: str, path: str, kernel_name: str):
    base = f"{hub.url}/user/{user}/api"
    headers = {"Authorization": f"token {token}"}
    r = requests.post(
        f"{base}/sessions",
        headers=headers,
        timeout=60,
        json={"path": path, "type": "notebook", "name": "", "kernel": {"name": kernel_name}},
    )
    if r.status_code != 201:
        raise HubError(f"start a kernel for {user}: HTTP {r.status_code} {r.text[:200]}")
    sess = r.json()
    ws_url = f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{sess['kernel']['id']}/channels"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=5)
    try:
        yield ws
    finally:
        ws.close()
        with contextlib.suppress(requests.RequestException):
            requests.delete(f"{base}/sessions/{sess['id']}", headers=headers, timeout=30)


def run_code(hub: Hub, user: str, token: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh kernel of ``user``'s server; what it printed."""
    out: list[str] = []
    with _kernel(hub, user, token, "run_code.ipynb", "qlab") as ws:
        _execute(ws, code, uuid.uuid4().hex, time.monotonic() + timeout, lambda: hub.server_alive(user), out)
    return "".join(out)


def run_notebook(hub: Hub, user: str, token: str, notebook: str, deadline: float) -> dict:
    """Run every code cell of ``~/qlab/notebooks/<notebook>`` in ``user``'s server, in order, as "Run all" does.

    Returns ``{"user", "notebook", "seconds", "cells", "errors", "failure"}``; a server that dies, or the wall-clock
    ``deadline`` (``time.monotonic()``), ends the run with ``failure`` set instead of hanging.
    """
    path = f"qlab/notebooks/{notebook}"
    result = {"user": user, "notebook": notebook, "seconds": None, "cells": 0, "errors": [], "failure": None}
    t0 = time.monotonic()
    try:
        r = requests.get(
            f"{hub.url}/user/{user}/api/contents/{path}", timeout=60, headers={"Authorization": f"token {token}"}
        )
        if r.status_code != 200:
            raise HubError(f"read {path}: HTTP {r.status_code}")
        nb = r.json()["content"]
        cells = [
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"]
            if c["cell_type"] == "code"
        ]
        with _kernel(hub, user, token, path, nb["metadata"]["kernelspec"]["name"]) as ws:
            session = uuid.uuid4().hex
            for code in cells:
                result["errors"] += _execute(ws, code, session, deadline, lambda: hub.server_alive(user))
                result["cells"] += 1
        result["seconds"] = round(time.monotonic() - t0, 1)
    except (HubError, TimeoutError, requests.RequestException, websocket.WebSocketException, OSError) as e:
        result["failure"] = f"{type(e).__name__}: {e}"
    return result


def mem_available() -> int:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``)."""
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise HubError("no MemAvailable in /proc/meminfo")


def rss_by_user(uids: set[int]) -> dict[int, int]:
    """Resident memory (bytes) of all processes of each uid: a learner's server, kernel and compilers."""
    out = dict.fromkeys(uids, 0)
    for status in pathlib.Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines() if ":" in ln)
            uid = int(fields["Uid"].split()[0])
            if uid in out and "VmRSS" in fields:
                out[uid] += int(fields["VmRSS"].split()[0]) * 1024
    return out


def load_round(hub: Hub, users: list[str], tokens: dict[str, str], notebook: str, cap_s: float) -> dict:
    """Run ``notebook`` in every user's (running) server at once; time, peak memory and failures per learner."""
    uids = {pwd.getpwnam(u).pw_uid: u for u in users}
    peak = dict.fromkeys(uids, 0)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for uid, rss in rss_by_user(set(uids)).items():
                peak[uid] = max(peak[uid], rss)
            stop.wait(0.5)

    available = mem_available()
    deadline = time.monotonic() + cap_s
    results: dict[str, dict] = {}
    sampler = threading.Thread(target=sample, daemon=True)
    runners = [
        threading.Thread(target=lambda u=u: results.__setitem__(u, run_notebook(hub, u, tokens[u], notebook, deadline)))
        for u in users
    ]
    t0 = time.monotonic()
    sampler.start()
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    stop.set()
    sampler.join()
    for uid, u in uids.items():
        results[u]["peak_rss_mib"] = round(peak[uid] / 2**20)
    return {
        "learners": len(users),
        "notebook": notebook,
        "wall_s": round(time.monotonic() - t0, 1),
        "mem_available_before_gib": round(available / 2**30, 1),
        "loadavg_before": os.getloadavg()[0],
        "results": [results[u] for u in users],
    }
