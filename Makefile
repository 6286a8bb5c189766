# Two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: venv test demo lint bench clean-demo gpu-wheels gpu-data

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
# there): the packages its image lacks, no dependencies (requirements-gpu.txt
# lists every one needed), into .whl/ (ignored; carried by the device tool).
GPU_WHEEL_PLATFORMS := $(foreach n,2014 _2_17 _2_27 _2_28 1,--platform manylinux$(n)_x86_64)
gpu-wheels: venv
	$(PY) -m pip download -q --disable-pip-version-check -d .whl --no-deps \
	  --python-version 3.12 --implementation cp $(GPU_WHEEL_PLATFORMS) \
	  --only-binary=:all: -r requirements-gpu.txt
	$(PY) -m pip wheel -q --disable-pip-version-check -w .whl --no-deps promise==2.3
	@du -sh .whl

# Compact shards for bench/gpu_check.sh's train_real (bench/make_gpu_data.py:
# 3000 train + 500 val DFDC crops at 128 px from $(GPU_DATA_SRC)) and a copy
# of the real sample videos for its MTCNN and predict steps, into .gpu_data/
# (ignored; never tracked: the samples' licences are unclear).
GPU_DATA_SRC ?= $(or $(ASRID_DFDC_SHARDS),/work/runs/dfdc_shards)
GPU_SAMPLES ?= $(or $(ASRID_REAL_SAMPLES),../shared/real_samples)
gpu-data: venv
	$(PY) -m bench.make_gpu_data --src $(GPU_DATA_SRC) --out .gpu_data/dfdc_faces_128
	rm -rf .gpu_data/real_samples
	@if [ -d $(GPU_SAMPLES)/videos ]; then \
	  mkdir -p .gpu_data/real_samples && \
	  cp -r $(GPU_SAMPLES)/videos .gpu_data/real_samples/ && \
	  chmod -R u+w .gpu_data/real_samples; \
	else echo "no $(GPU_SAMPLES)/videos: gpu_check skips mtcnn_cuda/predict"; fi
	@du -shc .whl .gpu_data 2>/dev/null || du -sh .gpu_data

clean-demo:
	rm -rf $(DEMO_DIR)
