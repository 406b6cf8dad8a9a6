"""Screen for #24's SST-2 0.89: does distilling an ensemble of full fine-tunes into one all-MiniLM-L6-v2, on the
training sentences plus word-span crops of them labelled by the ensemble, beat a single full fine-tune?

A plain PyTorch + transformers loop (the reference of benchmarks/sst2_reference.py: mean pooling, AdamW, 10%
warm-up, linear decay, batch 32); of tuneforge only the crops (train/distill.py's word_crops, so the screen draws
what `task.distill` trains on), so it runs on a GPU machine that has torch, transformers, the checkpoint folder
and the two JSONL files (the screens of session 17 ran an inline copy of the same function: same crops):

    bash benchmarks/sst2_screen_bundle.sh          # here: .dev2/ (45 MB), then carry it to the GPU machine
    python benchmarks/sst2_distill_screen.py --model .dev2/minilm --data .dev2/sst2 --out /tmp/screen

Teachers: --teachers seeds of the plain recipe (2 epochs). Students: for each --variants entry and each
--student-seeds seed, a fresh MiniLM trained on the ensemble's probabilities. A variant names its neighbours,
how many per sentence and the epochs: kd_crops8_e1 (word-span crops), kd_dels8_e1 (word deletions), kd_mix8_e1
(both), gold_/hard_ (the sentence's label / the ensemble's argmax instead of its probabilities), single,
kd_train. --lr sets the kd_ students' learning rate; --detok turns SST's PTB tokens back into plain text.
Prints one line per run as it finishes and writes results.jsonl (validation predictions included, for paired
intervals later).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def crops(texts: list[str], per_text: int, seed: int, min_words: int = 3, sources: list | None = None) -> list[str]:
    """tuneforge's word-span crops (train/distill.py: what `task.distill` trains on); `sources` gets the index of
    the text each came from. On a GPU machine without the project installed: PYTHONPATH=src."""
    from tuneforge.train.distill import word_crops

    spans, index = word_crops(texts, per_text, min_words, seed)
    if sources is not None:
        sources.extend(index)
    return spans


def word_deletions(texts: list[str], per_text: int, seed: int, p: float = 0.2, sources: list | None = None) -> list[str]:
    """`per_text` copies of each text with every word dropped with probability p (at least 2 words kept; a copy
    equal to its text or to an earlier one is dropped): a second kind of neighbour for the teachers to label."""
    import random
    rng = random.Random(seed)
    seen, out = set(texts), []
    for index, text in enumerate(texts):
        words = text.split()
        if len(words) < 4:
            continue
        for _ in range(per_text):
            kept = [w for w in words if rng.random() >= p]
            copy = " ".join(kept)
            if len(kept) >= 2 and copy not in seen:
                seen.add(copy)
                out.append(copy)
                if sources is not None:
                    sources.append(index)
    return out


PTB = [(" n't", "n't"), (" 's", "'s"), (" 're", "'re"), (" 've", "'ve"), (" 'll", "'ll"), (" 'd", "'d"),
       (" 'm", "'m"), ("-lrb- ", "("), (" -rrb-", ")"), ("-lrb-", "("), ("-rrb-", ")"), ("`` ", '"'), (" ''", '"'),
       (" ,", ","), (" .", "."), (" ;", ";"), (" :", ":"), (" ?", "?"), (" !", "!"), (" %", "%")]


def ptb_detokenize(text: str) -> str:
    """SST's PTB tokens back to plain text ("do n't" -> "don't", "-lrb-" -> "("), as the checkpoint read in
    pre-training; WordPiece splits "do n't" and "don't" differently, and "-lrb-" is three pieces of noise."""
    for old, new in PTB:
        text = text.replace(old, new)
    return text


class Classifier(torch.nn.Module):
    def __init__(self, model_dir: str):
        super().__init__()
        from transformers import AutoModel
        self.encoder = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 2)

    def forward(self, enc):
        states = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        return self.head((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9))


ID_MAP: torch.Tensor | None = None  # set when the checkpoint's vocabulary was cut to the tokens SST-2 uses


def encode(tokenizer, texts, max_length, device):
    """Tokenize; with a cut vocabulary (id_map.pt beside the weights, to fit the GPU machine's transfer limit),
    map the ids to the kept rows (every SST-2 word's tokens were kept: a missing one is an error)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    if ID_MAP is not None:
        mapped = ID_MAP[enc["input_ids"]]
        assert not ((mapped == 0) & (enc["input_ids"] != 0)).any(), "a token outside the cut vocabulary"
        enc["input_ids"] = mapped
    return enc.to(device)


def train(model_dir, tokenizer, texts, targets, seed, device, epochs=2, lr=5e-5, batch=32, max_length=64,
          hard_texts=None, hard_labels=None, hard_weight=0.0, temperature=1.0):
    """targets: a (N, 2) tensor of probabilities (one-hot for hard labels). The loss is the cross-entropy to
    them (= KL up to a constant) at `temperature`, times T^2 as in Hinton et al."""
    torch.manual_seed(seed)
    model = Classifier(model_dir).to(device)
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": 0.01},
         {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}], lr=lr)
    from transformers import get_linear_schedule_with_warmup
    steps = epochs * ((len(texts) + batch - 1) // batch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            enc = encode(tokenizer, [texts[i] for i in idx], max_length, device)
            logits = model(enc)
            target = targets[idx].to(device)
            loss = -(target * F.log_softmax(logits / temperature, -1)).sum(-1).mean() * temperature ** 2
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    return model


@torch.no_grad()
def logits_of(model, tokenizer, texts, device, batch=256, max_length=64):
    out = []
    for start in range(0, len(texts), batch):
        enc = encode(tokenizer, texts[start:start + batch], max_length, device)
        out.append(model(enc).float().cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--teachers", default="1,2,3,4,5")
    parser.add_argument("--student-seeds", default="42,43,44")
    parser.add_argument("--variants", default="single,kd_train,kd_crops4_e1,kd_crops4_e2,kd_crops8_e1")
    parser.add_argument("--detok", action="store_true", help="train and validate on ptb_detokenize(text)")
    parser.add_argument("--lr", type=float, default=5e-5, help="the kd_ students' learning rate")
    args = parser.parse_args()
    from transformers import AutoTokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = (out / "results.jsonl").open("a")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    global ID_MAP
    if (Path(args.model) / "id_map.pt").exists():
        ID_MAP = torch.load(Path(args.model) / "id_map.pt")
    train_rows, validation = read(Path(args.data) / "train.jsonl"), read(Path(args.data) / "validation.jsonl")
    fix = ptb_detokenize if args.detok else (lambda t: t)
    texts = [fix(r["text"]) for r in train_rows]
    onehot = F.one_hot(torch.tensor([int(r["label"]) for r in train_rows]), 2).float()
    val_texts, gold = [fix(r["text"]) for r in validation], torch.tensor([int(r["label"]) for r in validation])
    def pool_key(variant):  # kd_crops8_e1 -> ("crops", 8); kinds: crops, dels (word deletions), mix (both)
        body = variant.split("_")[1]
        kind = body.rstrip("0123456789")
        return kind, int(body[len(kind):])

    keys = {pool_key(v) for v in args.variants.split(",") if v.split("_")[0] in ("kd", "gold", "hard")
            and v != "kd_train"}
    pool_sources = {key: [] for key in keys}
    pool = {}
    for kind, k in sorted(keys):
        if kind == "crops":
            pool[(kind, k)] = crops(texts, k, seed=0, sources=pool_sources[(kind, k)])
        elif kind == "dels":
            pool[(kind, k)] = word_deletions(texts, k, seed=0, sources=pool_sources[(kind, k)])
        elif kind == "mix":
            a_src, b_src = [], []
            a, b = crops(texts, k, seed=0, sources=a_src), word_deletions(texts, k, seed=0, sources=b_src)
            pool[(kind, k)], pool_sources[(kind, k)] = a + b, a_src + b_src
        else:
            raise SystemExit(f"unknown pool kind {kind}")
    print(f"device {device}; crops per sentence -> pool size: {({k: len(v) for k, v in pool.items()})}", flush=True)

    def record(name, seed, val_logits, seconds, **extra):
        predicted = val_logits.argmax(-1)
        accuracy = (predicted == gold).float().mean().item()
        row = {"variant": name, "seed": seed, "accuracy": round(accuracy, 4), "seconds": round(seconds, 1),
               "predicted": predicted.tolist(), **extra}
        results.write(json.dumps(row) + "\n")
        results.flush()
        print(f"{name} seed {seed}: {accuracy:.4f} ({seconds:.0f} s) {extra or ''}", flush=True)

    teacher_val, teacher_pool = [], {k: [] for k in pool}
    teacher_train = []
    for seed in map(int, args.teachers.split(",")):
        started = time.time()
        model = train(args.model, tokenizer, texts, onehot, seed, device)
        teacher_val.append(logits_of(model, tokenizer, val_texts, device))
        teacher_train.append(logits_of(model, tokenizer, texts, device))
        for k in pool:
            teacher_pool[k].append(logits_of(model, tokenizer, pool[k], device))
        record("teacher", seed, teacher_val[-1], time.time() - started)
        del model
    for n in sorted({min(3, len(teacher_val)), len(teacher_val)}):
        mean_probs = torch.stack([t.softmax(-1) for t in teacher_val[:n]]).mean(0)
        record(f"ensemble{n}", 0, mean_probs.log(), 0.0)
    ens_train = torch.stack([t.softmax(-1) for t in teacher_train]).mean(0)
    ens_pool = {k: torch.stack([t.softmax(-1) for t in v]).mean(0) for k, v in teacher_pool.items()}
    print(f"ensemble agrees with train labels on {(ens_train.argmax(-1) == onehot.argmax(-1)).float().mean():.4f}",
          flush=True)

    for variant in args.variants.split(","):
        for seed in map(int, args.student_seeds.split(",")):
            started = time.time()
            if variant == "single":
                model = train(args.model, tokenizer, texts, onehot, seed, device)
            elif variant == "kd_train":
                model = train(args.model, tokenizer, texts, ens_train, seed, device)
            elif variant.split("_")[0] in ("kd", "gold", "hard"):
                key, epochs = pool_key(variant), int(variant.split("_e")[1])
                # the training sentences keep their gold labels; the neighbours take the ensemble's probabilities
                # (kd), their sentence's gold label (gold: no teacher) or the ensemble's argmax (hard)
                neighbour_targets = {"kd": ens_pool[key], "gold": onehot[pool_sources[key]],
                                     "hard": F.one_hot(ens_pool[key].argmax(-1), 2).float()}[variant.split("_")[0]]
                lr = args.lr if variant.startswith("kd_") else 5e-5
                model = train(args.model, tokenizer, texts + pool[key], torch.cat([onehot, neighbour_targets]), seed,
                              device, epochs=epochs, lr=lr)
            else:
                raise SystemExit(f"unknown variant {variant}")
            record(variant, seed, logits_of(model, tokenizer, val_texts, device), time.time() - started)
            del model


if __name__ == "__main__":
    main()
