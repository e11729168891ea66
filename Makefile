# The two commands of the README: `make demo` and `make test`.
# Both create (or reuse) a local virtual environment in .venv.
#
# PyTorch is installed first and pinned, so that no later dependency can pull
# a multi-GB CUDA build. On machines whose pip does not already serve the CPU
# wheel, point TORCH_PIP_ARGS at PyTorch's CPU index, e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup test demo lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

demo: setup
	$(PY) -m app.demo

lint: setup
	$(VENV)/bin/ruff check app workers models migrations tests benchmarks

clean:
	rm -rf $(VENV) var demo-output .pytest_cache
