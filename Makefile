# darknet_bn: every target sets up the virtual environment it needs, and no more.
#   make demo        the package alone (numba, numpy)
#   make test        + test extras: pytest, hypothesis, matplotlib, torch, onnx
#   make test-slow   the tests marked slow (CI runs both)
#   make bench       + pytest-benchmark, torch, matplotlib
# torch==2.13.0 is the machine's local CPU wheel (setup.cfg pins it).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

DEMO_EXTRAS  =
TEST_EXTRAS  = test,plot,torch,onnx
BENCH_EXTRAS = bench,plot,torch

.PHONY: demo test test-slow bench profile clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# One stamp per set of extras; a later target adds its extras to the same venv.
$(VENV)/.installed-%: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".$(if $(filter-out core,$*),[$(subst -,$(comma),$*)])"
	touch $@

comma := ,
stamp = $(VENV)/.installed-$(if $(1),$(subst $(comma),-,$(1)),core)

demo: $(call stamp,$(DEMO_EXTRAS))
	$(BIN)/darknet-bn demo

test: $(call stamp,$(TEST_EXTRAS))
	$(BIN)/python -m pytest

test-slow: $(call stamp,$(TEST_EXTRAS))
	$(BIN)/python -m pytest -m slow

# Benchmarks (not tests): side-by-side timings, ratios and the target table; raw JSON in out/.
BENCH_ARGS ?=
bench: $(call stamp,$(BENCH_EXTRAS))
	mkdir -p out
	$(BIN)/python benchmarks/bench.py --json out/bench.json $(BENCH_ARGS)

# Per-routine time breakdown of a train step (blas routines, fused kernels, fused passes).
PROFILE_ARGS ?=
profile: $(call stamp,$(BENCH_EXTRAS))
	$(BIN)/python benchmarks/profile_step.py $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .benchmarks out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
