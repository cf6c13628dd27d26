# darknet_bn: every target sets up its own virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Extras installed for tests: torch (the machine's local CPU wheel, torch==2.13.0)
# enables the optional cross-checks; set EXTRAS=test,plot to skip it.
EXTRAS ?= test,plot,bench,torch
STAMP   = $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma  := ,

.PHONY: venv demo test bench profile clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/darknet-bn demo

test: venv
	$(BIN)/python -m pytest

# Benchmarks (not tests): side-by-side timings and ratios; chart in docs/img, raw JSON in out/.
BENCH_ARGS ?=
bench: venv
	mkdir -p out
	$(BIN)/python benchmarks/bench.py --json out/bench.json --png docs/img/bench.png $(BENCH_ARGS)

# Per-routine time breakdown of a train step (blas routines, fused kernels, fused passes).
PROFILE_ARGS ?=
profile: venv
	$(BIN)/python benchmarks/profile_step.py $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .benchmarks out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
