# Set-up is part of every target: a fresh clone needs nothing else.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# Every install takes the exact versions CI tests from constraints.txt (pyproject.toml states
# the supported ranges). torch installs first, on its own: the CPU build.
PIP = $(1)/pip install -q -c constraints.txt
CHECK := build/wheel-check

.PHONY: demo test test-slow lint bench bench-peers setup docs config-docs wheel wheel-check

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found (Python 3.11 is required)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(call PIP,$(BIN)) --upgrade pip setuptools
	$(call PIP,$(BIN)) torch==2.13.0
	$(call PIP,$(BIN)) -e '.[dev,torchrec,tensorboard,mlflow,tune]'
	$(call PIP,$(BIN)) --no-deps torchrec==1.8.0
	@touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(call PIP,$(BIN)) -e '.[docs]'
	@touch $(DOCS_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/adatt demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/models.py

# torch-rechub and deepctr-torch side by side (the `bench` extra); e.g. ARGS='--quick'
bench-peers: $(STAMP)
	$(call PIP,$(BIN)) -e '.[bench]'
	$(BIN)/python benchmarks/peers.py $(ARGS)

# docs/config.md, the config reference, from the typed config models (a test checks it)
config-docs: $(STAMP)
	$(BIN)/python -m adatt config show --all --format markdown > docs/config.md

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or reference fails
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The wheel of this tree (what a package index would serve), in dist/
wheel: $(STAMP)
	rm -rf dist
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .

# Install that wheel into a fresh venv (no clone on its path) and drive the installed command
wheel-check: wheel
	rm -rf $(CHECK)
	$(PY) -m venv $(CHECK)/venv
	$(call PIP,$(CHECK)/venv/bin) --upgrade pip
	$(call PIP,$(CHECK)/venv/bin) torch==2.13.0
	$(call PIP,$(CHECK)/venv/bin) dist/adatt-*.whl
	cd $(CHECK) && venv/bin/adatt models
	cd $(CHECK) && venv/bin/adatt config list
	cd $(CHECK) && venv/bin/adatt train --config sim/adatt_sp data.rows=20000 train.epochs=1 \
		train.progress=false train.threads=2 out_dir=runs
	test -f $(CHECK)/runs/sim_adatt_sp/results.json
