# The README's two commands: `make quickstart` (set up, then run the main job on phantom data)
# and `make test` (set up, then run the whole test suite). Set-up is idempotent.
PY := .venv/bin/python
export DS_ACCELERATOR ?= cpu
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup quickstart test test-fast lint

setup: .venv/.installed

# torch first (the local CPU build), then the project under constraints so nothing pulls a CUDA torch.
.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,demo,mlflow]"
	# DeepSpeed JIT-builds its CPU comm op on first use (~40 s); build it once here. A build killed
	# half-way leaves a lock file that makes every later build wait forever.
	find $${TORCH_EXTENSIONS_DIR:-$$HOME/.cache/torch_extensions} -name lock -delete 2>/dev/null || true
	$(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" >/dev/null
	touch $@

quickstart: setup
	$(PY) -m jobs.run configs/quickstart.yaml

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
