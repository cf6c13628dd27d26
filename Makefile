# darknet_bn: every target sets up the virtual environment it needs, and no more.
#   make demo         the package alone (numba, numpy)
#   make test         + test extras: pytest, pytest-xdist (a worker per CPU), hypothesis,
#                       matplotlib, torch, onnx, onnxruntime, onnxscript, onnxslim, onnxsim,
#                       build, import-linter (the layer contracts),
#                       tflite, openvino (check on TFLite and OpenVINO IR)
#   make test-slow    the tests marked slow (CI runs both)
#   make bench        + pytest-benchmark, torch, matplotlib; writes out/ only
#   make bench-chart  make bench, then copies its chart to docs/img/bench.png (tracked)
#   make dist         sdist and wheel in dist/
#   make tflite-fixtures  tests/data/tflite/*.tflite with TensorFlow's converter, in .venv-tf
# Installs go through constraints.txt: this machine's CPU wheel of torch.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip install -c constraints.txt

DEMO_EXTRAS  =
TEST_EXTRAS  = test,plot,torch,onnx
BENCH_EXTRAS = bench,plot,torch

.PHONY: demo test test-slow bench bench-chart profile dist clean tflite-fixtures

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# One stamp per set of extras; a later target adds its extras to the same venv.
$(VENV)/.installed-%: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".$(if $(filter-out core,$*),[$(subst -,$(comma),$*)])"
	touch $@

comma := ,
stamp = $(VENV)/.installed-$(if $(1),$(subst $(comma),-,$(1)),core)

demo: $(call stamp,$(DEMO_EXTRAS))
	$(BIN)/darknet-bn demo

# One pytest worker per CPU (pytest-xdist): every test runs in a worker process of its own
# suite, the fork, thread and cache tests included.
PYTEST = $(BIN)/python -m pytest -n auto

test: $(call stamp,$(TEST_EXTRAS))
	$(PYTEST)

test-slow: $(call stamp,$(TEST_EXTRAS))
	$(PYTEST) -m slow

# Benchmarks (not tests): side-by-side timings, ratios and the target table; JSON and chart in out/.
BENCH_ARGS ?=
bench: $(call stamp,$(BENCH_EXTRAS))
	mkdir -p out
	$(BIN)/python -m benchmarks.bench --json out/bench.json --png out/bench.png $(BENCH_ARGS)

# The chart docs/benchmarks.md shows: a deliberate update of a tracked file.
bench-chart: bench
	cp out/bench.png docs/img/bench.png

# Per-routine time breakdown of a train step (blas routines, fused kernels, fused passes).
PROFILE_ARGS ?=
profile: $(call stamp,$(BENCH_EXTRAS))
	$(BIN)/python -m benchmarks.profile_step $(PROFILE_ARGS)

# The committed TFLite fixtures, remade by TensorFlow's own converter (tensorflow-cpu is
# too large for the test extras; the tests read the files with the light tflite parser).
TF_VENV ?= .venv-tf
tflite-fixtures:
	test -x $(TF_VENV)/bin/python || $(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install -c constraints.txt tensorflow-cpu -e .
	$(TF_VENV)/bin/python tools/make_tflite_fixtures.py tests/data/tflite

dist: $(call stamp,$(TEST_EXTRAS))
	rm -rf dist
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf $(VENV) $(TF_VENV) build dist *.egg-info .pytest_cache .hypothesis .benchmarks out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
