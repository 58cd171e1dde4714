# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv, install torch (the CPU build: see TORCH_INDEX) and the project, and
# run. Fashion-MNIST comes from the Debian package dataset-fashion-mnist.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# Empty: pip's configured index (here a local CPU wheel). Elsewhere PyPI's Linux torch is the
# CUDA build: TORCH_INDEX=https://download.pytorch.org/whl/cpu gets the CPU one.
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv data browser models docs clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install --quiet -e '.[test,all]'
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST's IDX files; installed with apt-get when missing and apt is available.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
	      || echo "warning: could not install dataset-fashion-mnist; pass --data DIR"; \
	  else echo "Fashion-MNIST not found in $(FMNIST); pass --data DIR with its IDX files"; fi; \
	fi

# Chromium and its WebDriver for the serve page's browser test (tests/test_serve_page.py), from
# Debian; the test skips, saying why, where they are missing.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver) \
	      || echo "warning: could not install chromium; the browser test will skip"; \
	  else echo "chromium not found; the browser test will skip"; fi; \
	fi

# The runtimes' tests run in a process of their own: in one process after the rest of the
# suite, ExecuTorch once crashed (SIGSEGV) in test_runtimes.py; alone, they pass.
test: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/test_runtimes.py
	$(BIN)/python -m pytest tests/test_runtimes.py

demo: $(STAMP) data
	$(BIN)/mobilenets demo

models: $(STAMP)
	$(BIN)/mobilenets models

# Every table of measured figures in README.md and docs/ from benchmarks/results/*.json.
docs: $(STAMP)
	$(BIN)/python tools/make_docs.py

clean:
	rm -rf $(VENV) runs .pytest_cache
