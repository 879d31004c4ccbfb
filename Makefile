# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PRESET ?= default

.PHONY: serve test test-fast bench lint format setup clean-models

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,convert,evaluate,dev]'
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
# unimportable (tests/support/no_frameworks.py): proof they need none; well under a minute.
test-fast: $(STAMP)
	scripts/ensure-test-deps.sh
	CHEXRAY_TEST_NO_FRAMEWORKS=1 $(BIN)/python -m pytest tests/unit tests/integration

# All benchmarks side by side; writes bench/results/<machine>-<date>.{json,md,png}.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[cpu,convert,bench]'
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Containerfile

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-models:
	rm -rf models_onnx/*.onnx models_onnx/parts models_onnx/manifest*.json models_onnx/versions
