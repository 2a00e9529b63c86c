# Two entry points: `make demo` (install, then the demo workflow) and `make test` (install, then the tests).
# TORCH picks the PyTorch build: the default is the CPU wheel; on a GPU machine use e.g. TORCH=torch.
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/pip

.PHONY: install demo test test-floor

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q '$(TORCH)'
	$(PIP) install -q -e '.[dev]'
	# DeepSpeed compiles against the installed torch, so it must see it (no build isolation).
	$(PIP) install -q --no-build-isolation 'deepspeed>=0.15'
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
