# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_output
BENCH_VENV ?= .venv-bench

.PHONY: demo test docs install bench bench-peers gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<26.2"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cytodata demo -o $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --quiet --site-dir .site
	$(BIN)/python -m pytest -q

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# The loader against its peers (MosaicML streaming, litdata) in an environment of their own.
# mosaicml-streaming pins xxhash<4, so pip resolves xxhash 3.x (SSE2 XXH3), with which the
# per-sample checks cost about twice what they cost with cytodata's own resolution (4.1+,
# AVX2/AVX512 at run time). MDS runs unchanged on 4.1, so it is installed over the pin (pip
# prints the conflict as an ERROR line and goes on): every pipeline is measured at its best.
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade "pip<26.2"
	$(BENCH_VENV)/bin/python -m pip install --quiet -e ".[bench]"
	$(BENCH_VENV)/bin/python -m pip install --quiet "xxhash>=4.1"
	$(BENCH_VENV)/bin/python -c "import xxhash, streaming, litdata; print('bench env: xxhash', xxhash.VERSION)"
	touch $@

bench-peers: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/loader.py --checks 16 --segment 6 $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python benchmarks/remote.py --quality $(REMOTE_ARGS)

# Every GPU path on a machine with one CUDA GPU, in one call within 8 minutes (after the install):
# writes gpu_check.json + gpu_check.md to $(OUT) (default: gpu-check/). docs/gpu.md has the schema.
# GPU_CHECK_ARGS: e.g. --only train-ratio,config: or --budget-s 600 (--dry-run: the CPU check).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(if $(OUT),--out $(OUT),) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(DEMO_OUT) .pytest_cache .site site tour
