"""Sphinx configuration of the rendered workbook (``make book``).

Sphinx + myst-nb + sphinx-book-theme, all pure Python and pinned in ``requirements/book.txt``: the site is
built from the committed, executed notebooks (never re-executed here) and needs no network at build or read
time. Jupyter Book 2 was the alternative; it fetches its site theme at build time, which these machines
cannot, so it would have had to be vendored. MathJax comes from npm (``book/package.json``, installed by
``make book``) and is served from the site itself.

Source root: the repository (``sphinx-build -c book . build/book``), so the notebooks, README and instructor
guide are read where they are; everything else is excluded.
"""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

project = "qlab — INT8 quantization on x86 CPUs"
author = "the qlab workbook"
root_doc = "book/index"
extensions = ["myst_nb"]
myst_enable_extensions = ["dollarmath", "amsmath"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# only what the book shows; everything else in the repository is not a page
include_patterns = [
    "book/index.md",
    "book/reading.md",
    "README.md",
    "CONTRIBUTING.md",
    "benchmarks/README.md",
    "docs/instructor-guide.md",
    "notebooks/[0-9][0-9]-*.ipynb",
]
exclude_patterns = ["build", ".venv", "book/node_modules", "**/.ipynb_checkpoints"]

nb_execution_mode = "off"  # the committed outputs are the book; make notebooks produces them
nb_execution_raise_on_error = True
nb_ipywidgets_js = {}  # widgets show their static figure; no widget JavaScript from a CDN
nb_merge_streams = True
nb_output_stderr = "show"

html_theme = "sphinx_book_theme"
html_title = "qlab: INT8 quantization on x86 CPUs"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_static_path = ["../build/book-static"]  # MathJax, copied there by make book
mathjax_path = "mathjax/tex-chtml.js"
html_last_updated_fmt = None
html_copy_source = False
templates_path = ["_templates"]
html_additional_pages = {"index": "redirect.html"}  # the site root opens the book
suppress_warnings = ["mystnb.unknown_mime_type"]
