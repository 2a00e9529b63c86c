# Two entry points: `make demo` (install, then the demo workflow) and `make test` (install, then the tests).
# TORCH picks the PyTorch build: the default is the CPU wheel; on a GPU machine use e.g. TORCH=torch.
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/pip

.PHONY: install demo test test-floor

# pip byte-compiles what it installs one file at a time; compileall does it on every core afterwards (a fresh `make
# install` 79 s; the same three pip commands compiling as they go 110 s, on the 2-core machine, 2026-12-08). Its
# exit status is ignored, as pip ignores the same errors: a few files of torch's own test helpers are in newer
# Python syntax.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --no-compile '$(TORCH)'
	$(PIP) install -q --no-compile -e '.[dev]'
	# DeepSpeed compiles against the installed torch, so it must see it (no build isolation).
	$(PIP) install -q --no-compile --no-build-isolation 'deepspeed>=0.15'
	$(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/snakemake --cores 2

# Two pytest workers: the demo-goals test (one long workflow) starts first on one, the SLURM tests on the other, and
# the rest of the suite fills in beside them; worksteal hands a finished worker the other's queued tests
# (tests/conftest.py sets the order).
test: install
	$(VENV)/bin/pytest -n 2 --dist worksteal

# The dependency floor: a second venv (/tmp/reg2rg-floor) with the lowest transformers, tokenizers, peft, accelerate
# and safetensors that pyproject.toml accepts, then the model-side tests in it (about 15 min on the 2-core machine;
# not part of `make test` or CI).
test-floor:
	bash scripts/lower_bounds.sh
