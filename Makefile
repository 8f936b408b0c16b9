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
REPARAM_MODELS ?= repvgg_a0 acnet_resnet18 dbb_resnet18 mobileone_s0
bench: setup
	mkdir -p $(BENCH_OUT)
	$(VENV)/bin/deploy bench $(BENCH_MODELS) --backend torch-cpu,ort-cpu --batch 1,8 --per-artifact \
		--json $(BENCH_OUT)/bench.json --csv $(BENCH_OUT)/bench.csv --md $(BENCH_OUT)/bench.md \
		--plot $(BENCH_OUT)/bench.png
	@for m in $(REPARAM_MODELS); do \
		echo "== $$m: train-form export vs fused by the ONNX stage alone"; \
		$(VENV)/bin/deploy export $$m -o $(BENCH_OUT)/$$m.train.onnx > $(BENCH_OUT)/$$m.export.log || exit 1; \
		$(VENV)/bin/deploy fuse $(BENCH_OUT)/$$m.train.onnx -o $(BENCH_OUT)/$$m.fused.onnx --passes onnx_reparam \
			--json $(BENCH_OUT)/$$m.fuse.json > $(BENCH_OUT)/$$m.fuse.log || exit 1; \
		tail -n 1 $(BENCH_OUT)/$$m.fuse.log; \
		$(VENV)/bin/deploy bench $(BENCH_OUT)/$$m.train.onnx $(BENCH_OUT)/$$m.fused.onnx --backend ort-cpu \
			--batch 1,8 --json $(BENCH_OUT)/reparam-$$m.json --md $(BENCH_OUT)/reparam-$$m.md \
			--plot $(BENCH_OUT)/reparam-$$m.png || exit 1; \
	done

lint: setup
	$(VENV)/bin/ruff check deploy passes models calib tests

clean:
	rm -rf $(VENV) results bench-results .pytest_cache .ruff_cache
