"""The rendered book (`make book`, build/book/) in a real browser: Debian's Chromium driven by Playwright.

Serves build/book from a local HTTP server and opens every page of the book: each notebook page loads, every
image on it decodes, every internal link resolves, the equations are typeset (MathJax, served from the site),
and no request leaves localhost (any other host fails the test). Screenshots go to test-artifacts/book/.
"""

from __future__ import annotations

import functools
import http.server
import os
import pathlib
import re
import shutil
import threading
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "build" / "book"
ARTIFACTS = ROOT / "test-artifacts" / "book"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))

if not (BOOK / "index.html").exists():
    if os.environ.get("CI"):
        raise RuntimeError("build/book is missing in CI: `make test` builds it with `make book`")
    pytest.skip("the book is not built: run `make book`", allow_module_level=True)
if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("Chromium is missing in CI: `make test` installs Debian's chromium package as root")
    pytest.skip("Debian's chromium is not installed (make test installs it when run as root)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a page closed mid-download: not the book's fault
        pass


@pytest.fixture(scope="module")
def site():
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(BOOK)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def visits(site, browser):
    """Every page of the book, visited once: what loaded, what it asked for, what it links to."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    host = urllib.parse.urlparse(site).netloc
    offsite: list[str] = []
    context = browser.new_context(viewport={"width": 1300, "height": 900})

    def guard(route):
        if urllib.parse.urlparse(route.request.url).netloc == host:
            route.continue_()
        else:  # the book must not reach the network: record and refuse
            offsite.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    pages = ["index.html", "book/index.html", "README.html", "docs/instructor-guide.html"]
    pages += [f"notebooks/{n}.html" for n in NOTEBOOKS]
    out = {}
    for rel in pages:
        page = context.new_page()
        failed = []
        page.on("response", lambda r, failed=failed: failed.append(r.url) if r.status >= 400 else None)
        resp = page.goto(f"{site}/{rel}", wait_until="networkidle")
        page.wait_for_timeout(300)
        images = page.eval_on_selector_all(
            "main img", "els => els.map(e => ({src: e.currentSrc, ok: e.complete && e.naturalWidth > 0}))"
        )
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        math = page.eval_on_selector_all("mjx-container", "els => els.length")
        title = page.title()
        if rel.startswith("notebooks/"):
            page.screenshot(path=str(ARTIFACTS / f"{pathlib.Path(rel).stem}.png"))
        out[rel] = {
            "status": resp.status if resp else None,
            "url": page.url,
            "images": images,
            "links": links,
            "math": math,
            "failed": failed,
            "title": title,
        }
        page.close()
    context.close()
    return {"pages": out, "offsite": offsite, "site": site}


def test_every_page_loads_with_its_title(visits):
    for rel, v in visits["pages"].items():
        assert v["status"] == 200 and not v["failed"], (rel, v["status"], v["failed"])
    assert visits["pages"]["index.html"]["url"].endswith("/book/index.html")  # the root opens the book
    for n in NOTEBOOKS:
        assert visits["pages"][f"notebooks/{n}.html"]["title"].startswith(n[:2]), n


def test_every_figure_of_every_notebook_loads(visits):
    total = 0
    for n in NOTEBOOKS:
        images = visits["pages"][f"notebooks/{n}.html"]["images"]
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"{n}: broken images {broken}"
        total += len(images)
    figures = sum(len(re.findall(r'"image/png"', (ROOT / "notebooks" / f"{n}.ipynb").read_text())) for n in NOTEBOOKS)
    assert total >= figures > 0  # every committed figure became an image on its page


def test_internal_links_resolve(visits):
    site = visits["site"]
    targets = {link.split("#")[0] for v in visits["pages"].values() for link in v["links"] if link.startswith(site)}
    bad = []
    for url in sorted(targets):
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status != 200:
                    bad.append((url, r.status))
        except Exception as e:  # noqa: BLE001 -- any failure is a broken link
            bad.append((url, str(e)))
    assert not bad and len(targets) > len(NOTEBOOKS)


def test_equations_are_typeset_from_the_site(visits):
    assert visits["pages"]["notebooks/01-quantization-fundamentals.html"]["math"] > 0


def test_no_request_leaves_localhost(visits):
    assert visits["offsite"] == []
