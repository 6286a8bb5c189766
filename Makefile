# Two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: venv test demo lint bench clean-demo

# Re-installs only when a requirements file changed (fast when .venv is current).
$(STAMP): requirements.txt requirements-torch.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-torch.txt
	@touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check asrid_jax configs preprocessing tests bench

demo: venv
	$(PY) -m preprocessing.make_sample $(DEMO_DIR)/videos
	$(PY) -m preprocessing.extract_faces --input $(DEMO_DIR)/videos --output $(DEMO_DIR)/shards
	@echo "demo: shards in $(DEMO_DIR)/shards (dataset_info.json at its root)"

bench: venv
	$(PY) -m bench.preprocess_bench

clean-demo:
	rm -rf $(DEMO_DIR)
