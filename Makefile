# slideseg — `make demo` runs the whole pipeline on generated data, `make test` runs the tests.
# Both create the virtualenv (.venv) and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SLIDESEG := $(VENV)/bin/slideseg
TORCH_VERSION ?= 2.13.0
# A CUDA build of torch where an NVIDIA GPU answers, the CPU build (a fraction of the size) elsewhere.
# Override with `make TORCH_SPEC='torch==X' ...`.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO ?= demo
DEMO_SIZE ?= 6000 8000

.PHONY: venv test test-all demo default-model lint typecheck bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "slideseg needs Python >= 3.11; run make PYTHON=python3.11 ..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifdef TORCH_SPEC
	$(PY) -m pip install -q "$(TORCH_SPEC)"
else ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q "torch>=2.4"
else
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" || \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
endif
	$(PY) -m pip install -q -e ".[dev,onnx]"
	touch $@

test: venv
	$(PY) -m pytest -m "not slow"

test-all: venv
	$(PY) -m pytest

# lint-imports checks the contracts in pyproject.toml ([tool.importlinter]): the layering of the
# package and the torch-free modules.
lint: venv
	$(VENV)/bin/ruff check slideseg tests benchmarks
	$(VENV)/bin/lint-imports --no-cache --no-logo

# The pure core is checked with `mypy --strict` as well (what --strict means follows the installed
# mypy); its own cache keeps the two runs from invalidating each other's.
STRICT_TYPED := slideseg/errors.py $(wildcard slideseg/config.py) slideseg/plan slideseg/model/config.py \
	slideseg/io/ngff.py slideseg/io/formats.py slideseg/io/axes.py

typecheck: venv
	$(VENV)/bin/mypy slideseg
	$(VENV)/bin/mypy --strict --follow-imports=silent --cache-dir .mypy_cache/strict $(STRICT_TYPED)

demo: venv
	mkdir -p $(DEMO)
	$(SLIDESEG) synth $(DEMO)/demo.ome.tif --size $(DEMO_SIZE) --overwrite
	$(SLIDESEG) predict $(DEMO)/demo.ome.tif -o $(DEMO)/demo-mask.zarr --probabilities --objects --overwrite
	$(SLIDESEG) info $(DEMO)/demo-mask.zarr
	$(SLIDESEG) evaluate $(DEMO)/demo-mask.zarr $(DEMO)/demo.truth.zarr

# The bundled model (slideseg/weights/default.safetensors), trained by slideseg itself on synthetic
# slides; the recipe is in slideseg/weights/README.md. Seeds fix the data, the weights and every tile.
DEFAULT_MODEL_WORK ?= build/default-model
default-model: venv
	$(SLIDESEG) synth $(DEFAULT_MODEL_WORK)/train/train.ome.tif --size 2048 2048 --seed 101 --overwrite --no-progress
	$(SLIDESEG) synth $(DEFAULT_MODEL_WORK)/val/val.ome.tif --size 1024 1024 --seed 202 --overwrite --no-progress
	$(SLIDESEG) train -o $(DEFAULT_MODEL_WORK)/default.safetensors --overwrite --no-progress \
		--images $(DEFAULT_MODEL_WORK)/train --masks $(DEFAULT_MODEL_WORK)/train \
		--val-images $(DEFAULT_MODEL_WORK)/val --val-masks $(DEFAULT_MODEL_WORK)/val \
		--depth 3 --width 8 --class-names background,nucleus --tile 252 \
		--optimizer adam --lr 0.003 --batch-size 1 --warmup-steps 0 --steps 2000 --tiles-per-epoch 100 --seed 0 --threads 1
	install -m 644 $(DEFAULT_MODEL_WORK)/default.safetensors slideseg/weights/default.safetensors
	$(SLIDESEG) info slideseg/weights/default.safetensors

bench: venv
	$(PY) benchmarks/bench_predict.py

clean:
	rm -rf $(DEMO) benchmarks/out .pytest_cache .hypothesis .mypy_cache .import_linter_cache
