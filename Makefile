# `make test` and `make bench` each do their own set-up first: a venv (kept in a cache
# folder outside the clone so clean clones reuse it), the dependencies, the extension.
VENV ?= $(or $(FUSED_RESNET_VENV),$(HOME)/.cache/fused_resnet/venv)
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-$(shell sha1sum requirements-dev.txt | cut -c1-12)
EXT_STAMP := build/.ext-stamp
CSRC := $(shell find csrc -type f) setup.py pyproject.toml
MAX_JOBS ?= $(shell nproc)

.PHONY: test test-fast lint bench bench-quick setup build clean

# Everything: lint, then every test (what CI runs).
test: setup lint
	$(PY) -m pytest tests

# The edit-compile-test loop: every test not marked `slow`, in parallel.
test-fast: setup
	$(PY) -m pytest -m "not slow" -n $(or $(TEST_JOBS),auto) -q tests

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .

# On a machine without a GPU: the CPU-sized run (minutes); `--full` is the whole sweep.
bench: setup
	$(PY) benchmarks/bench_blocks.py

# A few cases, short timings (a few minutes on a small CPU, under 3 on a GPU).
bench-quick: setup
	$(PY) benchmarks/bench_blocks.py --quick --json build/bench_quick.json

setup: $(DEPS_STAMP) $(EXT_STAMP)

$(PY):
	python3 -m venv $(VENV)

# The stamp is named by the requirements file's hash: a changed file makes a new stamp.
$(DEPS_STAMP): | $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Rebuilt when a C++/CUDA source or the build script changes.
$(EXT_STAMP): $(CSRC) $(DEPS_STAMP)
	@mkdir -p build
	@start=$$(date +%s); \
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install -q --no-build-isolation --no-deps -e . && \
	echo "extension built in $$(( $$(date +%s) - start )) s"
	touch $@

build: $(EXT_STAMP)

clean:
	rm -rf build fused_resnet/_C*.so *.egg-info
