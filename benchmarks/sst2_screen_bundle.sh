#!/usr/bin/env bash
# Makes .dev2/, what benchmarks/sst2_distill_screen.py needs on a GPU machine that has the repo's tree but none of
# its environment, within the 64 MiB a device call may carry (with the tree's ~9 MiB): the transformers wheel we
# test with, SST-2's JSONL (research use, no license stated) and all-MiniLM-L6-v2 (Apache-2.0) as fp16 with its
# vocabulary cut to the 12,022 tokens SST-2 uses (id_map.pt maps the tokenizer's ids to the kept rows; an
# embedding row no SST-2 text reaches never enters a forward pass, so the cut changes no result). About 45 MB.
#
#   bash benchmarks/sst2_screen_bundle.sh     # here, with the project's venv; then on the GPU machine (carry .dev2):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev2/whl/*.whl
#   PYTHONPATH=/tmp/site:src python3 benchmarks/sst2_distill_screen.py --model .dev2/minilm --data .dev2/sst2 --out $OUT/screen
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${TUNEFORGE_DATA:-../shared/data}
grep -qx "/.dev2/" .git/info/exclude 2>/dev/null || echo "/.dev2/" >> .git/info/exclude
rm -rf .dev2 && mkdir -p .dev2/whl .dev2/minilm .dev2/sst2
$PY -m pip download -q --no-deps --only-binary=:all: -d .dev2/whl \
  "transformers==$($PY -c "import importlib.metadata as m; print(m.version('transformers'))")"
cp "$DATA"/sst2/train.jsonl "$DATA"/sst2/validation.jsonl .dev2/sst2/
$PY - <<'PYEOF'
import json
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from tuneforge.models.packaged import packaged_path

sys.path.insert(0, "benchmarks")
from sst2_distill_screen import ptb_detokenize  # noqa: E402  (--detok runs read the plain-text form)

src = packaged_path("all-minilm-l6-v2")
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(src / name, ".dev2/minilm/")
tokenizer = AutoTokenizer.from_pretrained(src)
used = set(tokenizer.all_special_ids)
for split in ("train", "validation"):
    for line in open(f".dev2/sst2/{split}.jsonl"):
        text = json.loads(line)["text"]
        used.update(tokenizer(text)["input_ids"])
        used.update(tokenizer(ptb_detokenize(text))["input_ids"])
        for word in text.split() + ptb_detokenize(text).split():  # crops are word spans: every word's own tokens
            used.update(tokenizer(word, add_special_tokens=False)["input_ids"])
keep = torch.tensor(sorted(used))
id_map = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
id_map[keep] = torch.arange(len(keep))
weights = {k: v.half().contiguous() for k, v in load_file(src / "model.safetensors").items()}
key = next(k for k in weights if "word_embeddings" in k)
weights[key] = weights[key][keep].contiguous()
save_file(weights, ".dev2/minilm/model.safetensors", metadata={"format": "pt"})
config = json.load(open(".dev2/minilm/config.json"))
config["vocab_size"] = len(keep)
json.dump(config, open(".dev2/minilm/config.json", "w"), indent=1)
torch.save(id_map, ".dev2/minilm/id_map.pt")
print(f"{len(keep)} tokens kept")
PYEOF
du -sh .dev2
