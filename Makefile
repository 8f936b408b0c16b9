# make test / make demo each build the environment first when it is missing (a fresh clone needs nothing else).
# Recipes run in bash with pipefail, so filtering pip's output never hides its exit status.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo bench bench-int8 bench-prune bench-ortq bench-ov digits trt-api gpu-check lint clean

# setup also fills the cache with the real trained third-party models the demo and the suite use (PaddleOCR's
# ONNX files, from the rapidocr-onnxruntime wheel via pip; sha256-checked; nothing is downloaded at run time).
setup: $(STAMP)
	@$(PY) -m deploy.artifacts.ppocr fetch > /dev/null

# pip's noise stays out of the output: warnings about this machine's index folders that lack a package,
# and setuptools' editable-install banner. Real errors still print, and still fail the target.
PIP_QUIET := grep -v -E "^WARNING: Location '.*' is ignored|^ +(!!|\*+|with strategy|Please be careful|name as your package)|BuildBackendWarning|^ *$$" || true

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "setting up $(VENV) (pinned: requirements.lock)"
	@$(PY) -m pip install -q --upgrade pip 2>&1 | { $(PIP_QUIET); }
	@$(PY) -m pip install -q -r requirements.lock 2>&1 | { $(PIP_QUIET); }
	@$(PY) -m pip install -q --no-deps -e . 2>&1 | { $(PIP_QUIET); }
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The main job: `deploy pipeline` on the demo models (digits-resnet, repvgg_a0, ppocr-cls), results/index.html.
# Then the manifest of each model it ran (listed in demo.json) is proven again as CI would: `deploy verify`,
# hashes and certificates.
DEMO_OUT  ?= results
DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/deploy demo --out $(DEMO_OUT) $(DEMO_ARGS)
	@$(PY) -c 'import json, sys; [print(m["folder"]) for m in json.load(sys.stdin)["models"] if m.get("folder")]' \
		< $(DEMO_OUT)/demo.json | while read -r folder; do \
		$(VENV)/bin/deploy verify $(DEMO_OUT)/$$folder/manifest.json --no-latency | tail -n 1 || exit 1; \
	done

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
	$(MAKE) bench-int8
	$(MAKE) bench-prune

# Int8 (and fp16) artifacts: fp32 export, `deploy quantize` (auto, ort-cpu; --allow-poor: this target times the
# int8 file, and a POOR last line says when it misses deploy check's int8 preset), then fp32 vs int8 interleaved on
# ort-cpu. fp16 files are written and scored but not timed: ONNX Runtime's CPU provider has no float16
# Conv/Gemm kernels and computes them in float32 (see docs/quantize.md).
INT8_MODELS ?= resnet18 resnet50 mobilenet_v2
bench-int8: setup
	mkdir -p $(BENCH_OUT)
	@for m in $(INT8_MODELS); do \
		echo "== $$m: fp32 export, int8 (auto, ort-cpu), fp16"; \
		$(VENV)/bin/deploy export $$m -o $(BENCH_OUT)/$$m.onnx > $(BENCH_OUT)/$$m.export.log || exit 1; \
		$(VENV)/bin/deploy quantize $(BENCH_OUT)/$$m.onnx -o $(BENCH_OUT)/$$m.int8.onnx --allow-poor \
			--json $(BENCH_OUT)/$$m.int8.json > $(BENCH_OUT)/$$m.int8.log || exit 1; \
		tail -n 1 $(BENCH_OUT)/$$m.int8.log; \
		$(VENV)/bin/deploy quantize $(BENCH_OUT)/$$m.onnx -o $(BENCH_OUT)/$$m.fp16.onnx --precision fp16 \
			--json $(BENCH_OUT)/$$m.fp16.json > $(BENCH_OUT)/$$m.fp16.log || exit 1; \
		tail -n 1 $(BENCH_OUT)/$$m.fp16.log; \
		$(VENV)/bin/deploy bench $(BENCH_OUT)/$$m.onnx $(BENCH_OUT)/$$m.int8.onnx --backend ort-cpu --batch 1,8 \
			--json $(BENCH_OUT)/int8-$$m.json --md $(BENCH_OUT)/int8-$$m.md --plot $(BENCH_OUT)/int8-$$m.png || exit 1; \
	done

# Pruned artifacts: `deploy prune --latency 0.5` (measured on ort-cpu, batch 8; round-to measured) against the
# unpruned export, interleaved; then the pruned file quantized to int8: the compound speed-up over fp32.
PRUNE_MODELS ?= resnet50 mobilenet_v2
bench-prune: setup
	mkdir -p $(BENCH_OUT)
	@for m in $(PRUNE_MODELS); do \
		echo "== $$m: --latency 0.5 on ort-cpu batch 8, then int8"; \
		$(VENV)/bin/deploy export $$m -o $(BENCH_OUT)/$$m.onnx > $(BENCH_OUT)/$$m.export.log || exit 1; \
		$(VENV)/bin/deploy prune $$m -o $(BENCH_OUT)/$$m.pruned.onnx --latency 0.5 --backend ort-cpu --batch 8 \
			--json $(BENCH_OUT)/$$m.prune.json > $(BENCH_OUT)/$$m.prune.log || exit 1; \
		tail -n 1 $(BENCH_OUT)/$$m.prune.log; \
		$(VENV)/bin/deploy quantize $(BENCH_OUT)/$$m.pruned.onnx -o $(BENCH_OUT)/$$m.pruned.int8.onnx \
			> $(BENCH_OUT)/$$m.pruned.int8.log || exit 1; \
		$(VENV)/bin/deploy bench $(BENCH_OUT)/$$m.onnx $(BENCH_OUT)/$$m.pruned.onnx $(BENCH_OUT)/$$m.pruned.int8.onnx \
			--backend ort-cpu --batch 8 --json $(BENCH_OUT)/prune-$$m.json --md $(BENCH_OUT)/prune-$$m.md || exit 1; \
	done

# The two CPU runtimes side by side: each model's fp32 export, its int8 for ONNX Runtime (--target ort-cpu) and
# its int8 for OpenVINO (--target ov-cpu), all six (file, runtime) entries interleaved in one run per batch;
# ratios to ONNX Runtime fp32. The README's OpenVINO table comes from this target.
OV_MODELS ?= resnet18 resnet50 mobilenet_v2
bench-ov: setup
	mkdir -p $(BENCH_OUT)
	@for m in $(OV_MODELS); do \
		echo "== $$m: fp32, int8 for ort-cpu, int8 for ov-cpu; timed on ort-cpu and ov-cpu"; \
		$(VENV)/bin/deploy export $$m -o $(BENCH_OUT)/$$m.onnx > $(BENCH_OUT)/$$m.export.log || exit 1; \
		$(VENV)/bin/deploy quantize $(BENCH_OUT)/$$m.onnx -o $(BENCH_OUT)/$$m.int8.onnx --allow-poor \
			--json $(BENCH_OUT)/$$m.int8.json > $(BENCH_OUT)/$$m.int8.log || exit 1; \
		tail -n 1 $(BENCH_OUT)/$$m.int8.log; \
		$(VENV)/bin/deploy quantize $(BENCH_OUT)/$$m.onnx -o $(BENCH_OUT)/$$m.ov.int8.onnx --target ov-cpu --allow-poor \
			--json $(BENCH_OUT)/$$m.ov.int8.json > $(BENCH_OUT)/$$m.ov.int8.log || exit 1; \
		tail -n 1 $(BENCH_OUT)/$$m.ov.int8.log; \
		$(VENV)/bin/deploy bench $(BENCH_OUT)/$$m.onnx $(BENCH_OUT)/$$m.int8.onnx $(BENCH_OUT)/$$m.ov.int8.onnx \
			--backend ort-cpu,ov-cpu --batch 1,8 --json $(BENCH_OUT)/ov-$$m.json --md $(BENCH_OUT)/ov-$$m.md || exit 1; \
	done

# Side by side with ONNX Runtime's quantize_static on the same exports and photos (a benchmark, not a test).
bench-ortq: setup
	$(PY) scripts/quantize_side_by_side.py --models $(INT8_MODELS) --out $(BENCH_OUT)/ort-quantize

# Int8 accuracy on real labelled data: the digits-trained nets.
digits: setup
	$(VENV)/bin/deploy digits --out results/digits

# The TensorRT names deploy uses, listed per API path and checked against the real 10.16 / 11.4 bindings
# (fetched by pip from the registry into ~/.cache/deploy/trt-bindings; tests/test_trt_api.py runs the same check).
trt-api: setup
	$(PY) scripts/trt_bindings.py

lint: setup
	$(VENV)/bin/ruff check deploy passes models calib tests scripts

clean:
	rm -rf $(VENV) results bench-results .pytest_cache .ruff_cache

# Every CUDA path (torch-cuda, ort-cuda, trt) on a GPU machine, in under 8 minutes: gpu-check/gpu-check.json says what
# ran, what was skipped and why, and each figure (layout: docs/backends.md). Without a CUDA GPU the script prints one
# line and exits 3 (make reports it as "Error 3"). On a machine whose CUDA PyTorch is outside the venv:
# make gpu-check PY=python3 (deploy installed there with pip install --no-deps -e .).
GPU_CHECK_ARGS ?=
gpu-check:
	@$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)
