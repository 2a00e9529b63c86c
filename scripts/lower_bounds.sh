#!/usr/bin/env bash
# The dependency floor: a fresh venv with the lowest versions pyproject.toml accepts for the model-side packages
# (transformers, tokenizers, peft, accelerate, safetensors), then the model, tokenizer,
# generation and labeler tests in it. Not part of `make test` or .ci/run (it installs a second environment);
# run it when a floor in pyproject.toml changes:
#
#   bash scripts/lower_bounds.sh            # venv in ${FLOOR_VENV:-/tmp/reg2rg-floor}, kept for the next run
#   FLOOR_FRESH=1 bash scripts/lower_bounds.sh   # remove the venv first
#
# torch stays at TORCH (default: the CPU wheel the Makefile installs); the floors pinned are read from
# pyproject.toml (every `name>=X` of FLOOR_PACKAGES becomes `name==X`), so the script tests what the file says.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FLOOR_VENV:-/tmp/reg2rg-floor}
TORCH=${TORCH:-torch==2.13.0}
PYTHON=${PYTHON:-python3}
FLOOR_PACKAGES="transformers tokenizers peft accelerate safetensors"
TESTS=${FLOOR_TESTS:-tests/test_model.py tests/test_prompt.py tests/test_generate.py tests/test_labelers.py tests/test_weights.py}

pins=$("$PYTHON" - "$FLOOR_PACKAGES" <<'PY'
import re, sys, tomllib
wanted = sys.argv[1].split()
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = {}
for dep in deps:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)(?:,.*)?", dep.strip())
    if m and m.group(1).lower() in wanted:
        pins[m.group(1).lower()] = f"{m.group(1)}=={m.group(2)}"
missing = [w for w in wanted if w not in pins]
if missing:
    sys.exit(f"pyproject.toml: no `>=` floor for {', '.join(missing)}")
print(" ".join(pins[w] for w in wanted))
PY
)
echo "floor pins: $pins"

start=$(date +%s)
[ "${FLOOR_FRESH:-0}" = 1 ] && rm -rf "$VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "$TORCH"
# The package with its other dependencies at their newest allowed versions, then the floors forced over them
# (pip refuses a pin that another dependency of the set cannot take: that is a floor to raise).
"$VENV/bin/pip" install -q -e '.[dev]' $pins
"$VENV/bin/pip" install -q $pins
"$VENV/bin/pip" check
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "transformers", "tokenizers", "peft", "accelerate", "safetensors", "huggingface-hub", "numpy"):
    print(f"{name} {md.version(name)}")
PY
echo "install: $(( $(date +%s) - start )) s"
t0=$(date +%s)
"$VENV/bin/python" -m pytest -q -p no:cacheprovider $TESTS
echo "tests: $(( $(date +%s) - t0 )) s; total: $(( $(date +%s) - start )) s"
