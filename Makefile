# Two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: venv test demo lint bench clean-demo gpu-wheels

# Re-installs only when a requirements file changed (fast when .venv is current).
$(STAMP): requirements.txt requirements-torch.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned requirements into $(VENV) (a few minutes the first time)"
	$(PY) -m pip install -qq --disable-pip-version-check -r requirements.txt -r requirements-torch.txt
	@touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check asrid_jax configs preprocessing tests bench

# The whole job on the built-in sample: videos -> face shards -> a short
# dyn_mix training run -> evaluation from the Orbax checkpoint -> prediction
# with attention heatmaps. Each step resumes or skips work already done.
# DEMO_VIDEOS are in the held-out test split (the split is a deterministic
# function of --seed, 0 by default).
DEMO_VIDEOS ?= $(DEMO_DIR)/videos/sample_part_0/real_001.mp4 $(DEMO_DIR)/videos/sample_part_0/fake_001_0.mp4
demo: venv
	$(PY) -m preprocessing.make_sample $(DEMO_DIR)/videos
	$(PY) -m preprocessing.extract_faces --input $(DEMO_DIR)/videos --output $(DEMO_DIR)/shards
	$(PY) -m asrid_jax.train --config=configs/dyn_mix.py:runlocal --workdir=$(DEMO_DIR)/run --config.data.dir=$(DEMO_DIR)/shards
	$(PY) -m asrid_jax.evaluate --workdir=$(DEMO_DIR)/run --split=test
	$(PY) -m asrid_jax.predict --workdir=$(DEMO_DIR)/run --heatmaps --out=$(DEMO_DIR)/predict $(DEMO_VIDEOS)
	@echo
	@echo "demo done:"
	@echo "  face shards     $(DEMO_DIR)/shards (dataset_info.json at its root)"
	@echo "  training run    $(DEMO_DIR)/run (Orbax checkpoints, TensorBoard event files)"
	@echo "  evaluation      $(DEMO_DIR)/run/eval_test_*/ (metrics.json, videos.csv, roc.png, scores.png)"
	@echo "  predictions     $(DEMO_DIR)/predict/predictions.csv, heatmaps in $(DEMO_DIR)/predict/heatmaps/"

bench: venv
	$(PY) -m bench.preprocess_bench
	$(PY) -m bench.pipeline_bench
	$(PY) -m bench.model_bench
	$(PY) -m bench.train_bench
	$(PY) -m bench.predict_bench

# Wheels for bench/gpu_check.sh on the GPU machine (Python 3.12, no network
# there): the packages its image lacks, with their dependencies, into .whl/.
gpu-wheels: venv
	$(PY) -m pip download -q --disable-pip-version-check -d .whl \
	  --python-version 3.12 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_28_x86_64 --only-binary=:all: \
	  -r requirements-gpu.txt

clean-demo:
	rm -rf $(DEMO_DIR)
