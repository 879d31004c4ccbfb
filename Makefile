# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PRESET ?= default

.PHONY: serve test test-fast bench soak bench-gpu lint format setup clean-models

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	scripts/pip-install.sh $(BIN)/python --upgrade pip
	scripts/pip-install.sh $(BIN)/python -e '.[cpu,convert,evaluate,dev]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# Builds the model repository if missing (the default preset), then starts the server on
# CHEXRAY_HOST:CHEXRAY_PORT (127.0.0.1:8000) with SQLite and media under CHEXRAY_DATA_DIR.
serve: $(STAMP)
	$(BIN)/chexray serve --preset $(PRESET)

test: lint
	scripts/ensure-test-deps.sh
	$(BIN)/python -m pytest

# The unit and integration layers alone, with TensorFlow, torch, Keras and tf2onnx made
# unimportable (tests/support/no_frameworks.py): proof they need none; about 2 minutes.
test-fast: $(STAMP)
	scripts/ensure-test-deps.sh
	CHEXRAY_TEST_NO_FRAMEWORKS=1 $(BIN)/python -m pytest tests/unit tests/integration

# All benchmarks side by side; writes bench/results/<machine>-<date>.{json,md,png}.
bench: $(STAMP)
	scripts/pip-install.sh $(BIN)/python -e '.[cpu,convert,bench]'
	$(BIN)/python bench/run.py

# 30 minutes of mixed traffic at saturation (bench/soak.py): RSS over time, answers by
# code, no lost or mixed-up studies; writes bench/results/soak-<machine>-<date>.*.
# SOAK_ARGS passes options: SOAK_ARGS='--minutes 5'.
soak: $(STAMP)
	scripts/pip-install.sh $(BIN)/python -e '.[cpu,convert,bench]'
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# GPU benchmark (bench/gpu.py): engine limit on CUDA fp32/fp16, the server at 1-64 clients,
# peak device memory; writes bench/results/<gpu>-<date>.{json,md,png}. Its own venv:
# onnxruntime-gpu must never sit beside the cpu extra's onnxruntime. The model repository
# is reused when present; only a missing one is built, with the usual venv (TensorFlow and
# torch, minutes more), or, with MODELS_PACK=repo.tar.xz (`python bench/portable_repo.py
# pack models_onnx repo.tar.xz` on a machine that has one), unpacked from its graphs with
# the large weights redrawn: seconds, no TensorFlow. BENCH_GPU_ARGS passes options:
# BENCH_GPU_ARGS='--seconds 40'.
GPU_VENV := .venv-gpu
GPU_BIN := $(GPU_VENV)/bin
GPU_STAMP := $(GPU_VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
MODELS ?= models_onnx

$(GPU_STAMP): pyproject.toml
	test -x $(GPU_BIN)/python || $(PYTHON) -m venv $(GPU_VENV)
	scripts/pip-install.sh $(GPU_BIN)/python --upgrade pip
	scripts/pip-install.sh $(GPU_BIN)/python -e '.[gpu,bench,bench-gpu]'
	rm -f $(GPU_VENV)/.installed-* && touch $@

bench-gpu:
	@t0=$$(date +%s); \
	$(MAKE) --no-print-directory $(GPU_STAMP) || exit 1; \
	t1=$$(date +%s); echo "[phase] venv ($(GPU_VENV)): $$((t1 - t0)) s"; \
	if [ -f $(MODELS)/manifest.json ]; then echo "reusing the model repository $(MODELS)"; \
	elif [ -n "$(MODELS_PACK)" ]; then \
		$(GPU_BIN)/python bench/portable_repo.py unpack $(MODELS_PACK) $(MODELS) || exit 1; \
	else $(MAKE) --no-print-directory $(STAMP) && \
		$(BIN)/chexray convert --preset default --out $(MODELS) || exit 1; fi; \
	t2=$$(date +%s); echo "[phase] repository: $$((t2 - t1)) s"; \
	$(GPU_BIN)/python bench/gpu.py --repo $(MODELS) \
		--phase-time venv=$$((t1 - t0)) --phase-time repository=$$((t2 - t1)) $(BENCH_GPU_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Containerfile

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-models:
	rm -rf models_onnx/*.onnx models_onnx/parts models_onnx/manifest*.json models_onnx/versions
