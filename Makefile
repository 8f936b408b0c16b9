# make test / make demo each build the environment first when it is missing (a fresh clone needs nothing else).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/deploy demo --out results

# The latency suite: each model's backends interleaved as one group (ratios: ort-cpu over torch-cpu).
BENCH_MODELS ?= resnet18 resnet50 mobilenet_v2 mobilenet_v3_large shufflenet_v2_x1_0
BENCH_OUT    ?= bench-results
bench: setup
	mkdir -p $(BENCH_OUT)
	$(VENV)/bin/deploy bench $(BENCH_MODELS) --backend torch-cpu,ort-cpu --batch 1,8 --per-artifact \
		--json $(BENCH_OUT)/bench.json --csv $(BENCH_OUT)/bench.csv --md $(BENCH_OUT)/bench.md \
		--plot $(BENCH_OUT)/bench.png

lint: setup
	$(VENV)/bin/ruff check deploy passes models calib tests

clean:
	rm -rf $(VENV) results bench-results .pytest_cache .ruff_cache
