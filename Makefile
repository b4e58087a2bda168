# qlab workbook: two commands.
#   make lab    set up (if needed) and start JupyterLab on notebooks/
#   make test   set up (if needed) and run the whole test suite (unit tests + strict nbval)
# Everything else here is what those two use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qlab-setup
PORT   ?= 8888

.PHONY: lab test setup browser notebooks book hub lock clean-venv

setup: $(STAMP)

# Re-run when the pins or the package metadata change.
$(STAMP): requirements/lock.txt pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name qlab --display-name "Python (qlab)" >/dev/null
	@if [ -f qlab/kernels/__main__.py ]; then $(BIN)/python -m qlab.kernels; fi
	@touch $@
	@echo "set-up done: $(VENV) with the pinned dependencies, qlab (editable), kernel 'qlab'"

# JupyterLab refuses to start as root unless told to: root is what containers and many cloud images give.
lab: setup
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "make lab: running as root, so starting JupyterLab with --allow-root"; \
	  exec $(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT) --allow-root; \
	else \
	  exec $(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT); \
	fi

# The browser test drives Debian's Chromium (Playwright's own browser download fails here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: install it (apt-get install chromium) or the browser test is skipped"; fi; }

# The book is built first (tests/test_book.py opens it in Chromium).
# Lint; the unit tests in random order; strict nbval over every notebook; then nbval again with the
# libraries held to AVX2, to AVX-VNNI, to AVX-512 without AMX, and without the C++ kernels
# (scripts/isa_matrix.py; the last only for the notebooks that loaded qlab.kernels in the main run,
# which build/kernel-trace.txt lists).
test: setup browser book hub
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -p randomly -p no:cacheprovider
	@mkdir -p build && rm -f build/kernel-trace.txt
	QLAB_KERNEL_TRACE=$(CURDIR)/build/kernel-trace.txt $(BIN)/python -m pytest notebooks --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider -p no:randomly
	$(BIN)/python scripts/isa_matrix.py --kernel-trace build/kernel-trace.txt

# The rendered book: a static site of the committed notebooks (not re-executed) and the docs, in build/book/.
# Its own pins (requirements/book.txt) and MathJax from npm (book/package-lock.json), served from the site:
# the build and the pages need no network once these are installed.
BOOK_STAMP := $(VENV)/.qlab-book
$(BOOK_STAMP): $(STAMP) requirements/book.txt book/package-lock.json
	$(BIN)/python -m pip install --quiet -r requirements/book.txt
	cd book && npm ci --no-audit --no-fund --silent
	@touch $@

book: $(BOOK_STAMP)
	@# the notebook checks first: a notebook not executed in order, or with an untagged error, fails the build
	$(BIN)/python -m pytest -q -p no:randomly -p no:cacheprovider tests/test_notebook_files.py
	rm -rf build/book build/book-static && mkdir -p build/book-static
	cp -r book/node_modules/mathjax/es5 build/book-static/mathjax
	$(BIN)/sphinx-build -q -W --keep-going -b html -c book . build/book
	@echo "make book: build/book/index.html (serve it: $(BIN)/python -m http.server -d build/book)"

# The workshop hub (deploy/jupyterhub): jupyterhub from requirements/hub.txt, its proxy from npm. Start it as
# root with the passwords in the environment (docs/instructor-guide.md); tests/test_hub.py drives it.
HUB_STAMP := $(VENV)/.qlab-hub
$(HUB_STAMP): $(STAMP) requirements/hub.txt deploy/jupyterhub/package-lock.json
	$(BIN)/python -m pip install --quiet -r requirements/hub.txt
	cd deploy/jupyterhub && npm ci --no-audit --no-fund --silent
	@touch $@

hub: $(HUB_STAMP)

# Re-execute the committed notebooks (after editing one): outputs saved, widget state stripped.
notebooks: setup
	$(BIN)/python scripts/execute_notebooks.py $(NB)

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^qlab' > requirements/lock.txt.new
	@echo "review requirements/lock.txt.new, then move it over requirements/lock.txt"

clean-venv:
	rm -rf $(VENV)
