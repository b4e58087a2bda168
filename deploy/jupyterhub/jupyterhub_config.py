"""JupyterHub for a qlab workshop: one machine, each learner a system user with their own server and home.

    sudo QLAB_WORKSHOP_PASSWORD=... QLAB_ADMIN_PASSWORD=... \\
        .venv/bin/jupyterhub -f deploy/jupyterhub/jupyterhub_config.py

* Who gets in: the names in the roster file (``QLAB_HUB_ROSTER``, one per line; default ``roster.txt`` next to
  this file), with the workshop password (``QLAB_WORKSHOP_PASSWORD``, at least 12 characters); admins (the
  names in ``QLAB_HUB_ADMINS``) log in with ``QLAB_ADMIN_PASSWORD``. Nobody else: no open sign-up. The hub
  refuses to start without both passwords.
* Where: ``127.0.0.1`` and ``QLAB_HUB_PORT`` (default 8000). For a class, put it behind an HTTPS reverse proxy
  (docs/instructor-guide.md), never on a public interface in plain HTTP.
* Each learner's server runs as the system user of the same name (``LocalProcessSpawner``; the hub runs as
  root to switch users), in that user's home, with a copy of the notebooks made at first spawn; one torch
  thread each (``QLAB_MAX_THREADS``), and qlab's int8 kernels loaded from one shared, pre-built cache
  (``QLAB_CACHE_DIR``, default ``<state>/kernel-cache``: build it once before the class with
  ``QLAB_CACHE_DIR=<it> python -m qlab.kernels`` and make it world-readable) so a class does not compile at once.
* Learners' processes run the hub's own Python: every directory on the way to it and to this clone must be
  searchable by other users (a Python under ``/root`` is not; ``deploy/jupyterhub/loadtest.py`` checks).
"""

import os
import pathlib
import shutil
import sys

c = get_config()  # noqa: F821 -- provided by JupyterHub when it loads this file

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent


def _need(name: str, min_len: int = 12) -> str:
    value = os.environ.get(name, "")
    if len(value) < min_len:
        raise SystemExit(f"{name} must be set to a secret of at least {min_len} characters")
    return value


roster_file = pathlib.Path(os.environ.get("QLAB_HUB_ROSTER", HERE / "roster.txt"))
learners = {ln.strip() for ln in roster_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
admins = {a for a in os.environ.get("QLAB_HUB_ADMINS", "").split(",") if a}

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("QLAB_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.data_files_path = str(pathlib.Path(sys.prefix) / "share" / "jupyterhub")
state = pathlib.Path(os.environ.get("QLAB_HUB_STATE", REPO / "build" / "hub"))
state.mkdir(parents=True, exist_ok=True)
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.ConfigurableHTTPProxy.command = [str(HERE / "node_modules" / ".bin" / "configurable-http-proxy")]

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = _need("QLAB_WORKSHOP_PASSWORD")
c.SharedPasswordAuthenticator.admin_password = _need("QLAB_ADMIN_PASSWORD", 16)
c.Authenticator.allowed_users = learners
c.Authenticator.admin_users = admins

c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(VENV_BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {
    "QLAB_MAX_THREADS": os.environ.get("QLAB_MAX_THREADS", "1"),
    "OMP_NUM_THREADS": os.environ.get("QLAB_MAX_THREADS", "1"),
    "QLAB_CACHE_DIR": os.environ.get("QLAB_CACHE_DIR", str(state / "kernel-cache")),
    "PATH": f"{VENV_BIN}:/usr/bin:/bin",
}


def copy_notebooks(spawner):
    """First spawn: the learner's own copy of notebooks/ (and the data it reads), owned by the learner."""
    import pwd

    user = pwd.getpwnam(spawner.user.name)
    home = pathlib.Path(user.pw_dir)
    target = home / "qlab"
    if not target.exists():
        shutil.copytree(REPO / "notebooks", target / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        for root, dirs, files in os.walk(target):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                os.chown(name, user.pw_uid, user.pw_gid)
    home.chmod(0o700)  # learners cannot read each other's homes


c.Spawner.pre_spawn_hook = copy_notebooks
