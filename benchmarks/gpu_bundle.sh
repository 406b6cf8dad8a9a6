#!/usr/bin/env bash
# Makes .dev/, what benchmarks/gpu_check.sh needs on a GPU machine that has the repo's tree but none of its
# environment: wheels of the transformers/peft/trl versions we test with, bitsandbytes cut down to its CPU and
# CUDA 13.0 libraries, SmolLM2's config + tokenizer (no weights: the 98 MB GGUF exceeds the 64 MiB a call may
# carry) and the Alpaca JSONL. About 25 MB. Run from the repo root with the project's venv set up; then carry
# .dev (it is git-ignored through .git/info/exclude).
#
#   bash benchmarks/gpu_bundle.sh && BUDGET_S=400 bash benchmarks/gpu_check.sh    # the second on the GPU machine
set -euo pipefail
PY=${PY:-.venv/bin/python}
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
grep -qx "/.dev/" .git/info/exclude 2>/dev/null || echo "/.dev/" >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/whl .dev/bnb .dev/smollm2-config .dev/alpaca
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
$PY -m pip download -q --no-deps --only-binary=:all: -d .dev/whl \
  "transformers==$(version transformers)" "peft==$(version peft)" "trl==$(version trl)" "datasets==$(version datasets)"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dev/whl \
  dill multiprocess
cp -r "$SITE/bitsandbytes" .dev/bnb/
find .dev/bnb -name '*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete
find .dev/bnb -name __pycache__ -prune -exec rm -rf {} +
$PY - <<'EOF'
from tuneforge.models import load_tokenizer
from tuneforge.models.packaged import converted_gguf, resolve_model
import shutil
src = converted_gguf(resolve_model("smollm2-135m-instruct").location)
for name in ("config.json", "generation_config.json"):
    shutil.copy(src / name, ".dev/smollm2-config/")
load_tokenizer("smollm2-135m-instruct").save_pretrained(".dev/smollm2-config")
EOF
cp ../shared/data/alpaca/*.jsonl .dev/alpaca/
du -sh .dev
