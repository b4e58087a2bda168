# qlab workbook: two commands.
#   make lab    set up (if needed) and start JupyterLab on notebooks/
#   make test   set up (if needed) and run the whole test suite (unit tests + strict nbval)
# Everything else here is what those two use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qlab-setup
PORT   ?= 8888

.PHONY: lab test setup notebooks bench lock clean-venv

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

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT)

test: setup
	$(BIN)/python -m pytest tests notebooks --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

# Re-execute the committed notebooks (after editing one): outputs saved, widget state stripped.
notebooks: setup
	$(BIN)/python scripts/execute_notebooks.py $(NB)

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^qlab' > requirements/lock.txt.new
	@echo "review requirements/lock.txt.new, then move it over requirements/lock.txt"

clean-venv:
	rm -rf $(VENV)
