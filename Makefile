# Two entry points on a fresh machine: `make demo` and `make test`. Both are idempotent:
# the virtual environment is (re)built only when pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

# spandrel (any restorer's state dict) without its torchvision dependency: torchvision wheels must match
# the torch build exactly and pip would otherwise pull another torch. tlc_export/load/spandrel_arches.py
# imports spandrel without the two architectures that need torchvision (LaMa, RestoreFormer).
SPANDREL := spandrel==0.4.2 spandrel-extra-arches==0.2.0

$(STAMP): pyproject.toml plugins/tlc_trt_plugin/pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel lies on local disk; a bare "torch" would download a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(SPANDREL)
	$(BIN)/pip install --quiet -e 'plugins/tlc_trt_plugin[ort,triton]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python samples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV)
