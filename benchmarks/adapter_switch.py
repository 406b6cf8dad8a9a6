"""Switching the active adapter among many loaded in memory: tuneforge's set_active_adapters against peft's
set_adapter, on the same base with the same adapter weights, in one process.

Work: K LoRA adapters (rank R, alpha 2R, every linear layer but the head, A and B random so none is the identity)
added to SmolLM2-135M-Instruct in memory, in both tools. Then S switches, cycling through the adapters so every
switch changes the active one, alternating the two tools switch by switch so load on a shared machine hits both
alike. Timed: the switch call alone, and one forward pass of a 1 x T prompt right after a switch (fp32, no grad).
The outputs of the two tools after the same switch are compared (they must agree: same weights, same maths).

Target (issue 3): a switch under 5 ms on SmolLM2. A switch only flips which adapter each layer runs (nothing is
copied or merged); tuneforge keeps the list of adapter layers cached, so it does not walk the module tree.

    python benchmarks/adapter_switch.py                 # SmolLM2-135M, 8 adapters of rank 16
    python benchmarks/adapter_switch.py --tiny          # smoke run on a tiny random Llama
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def build(args):
    """(our model, peft model, adapter names): the same base twice, the same K adapters in both."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from tuneforge.methods import adapter_state_dict, add_adapter
    from tuneforge.models import load_model, tiny_llama

    def base():
        return tiny_llama() if args.tiny else load_model(args.base, device="cpu")

    ours, names = base(), [f"adapter-{i}" for i in range(args.adapters)]
    for i, name in enumerate(names):
        torch.manual_seed(1000 + i)
        add_adapter(ours, "lora", name, r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear",
                    init_lora_weights="gaussian")
        with torch.no_grad():
            for pname, p in ours.named_parameters():
                if f".lora_B.{name}." in pname:
                    p.normal_(0, 0.01)
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear")
    theirs = get_peft_model(base(), config, adapter_name=names[0])
    for name in names:
        if name != names[0]:
            theirs.add_adapter(name, config)
        set_peft_model_state_dict(theirs, adapter_state_dict(ours, name), adapter_name=name)
    return ours.eval(), theirs.eval(), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --base (smoke run)")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--switches", type=int, default=400, help="switches timed per tool")
    parser.add_argument("--forwards", type=int, default=40, help="of those, how many are followed by a forward")
    parser.add_argument("--tokens", type=int, default=32, help="prompt length T of the forward after a switch")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tuneforge.methods import set_active_adapters

    ours, theirs, names = build(args)
    vocab = ours.config.vocab_size
    ids = torch.randint(0, min(vocab, 1000), (1, args.tokens), generator=torch.Generator().manual_seed(0))
    switch = {"tuneforge": lambda n: set_active_adapters(ours, n), "peft": theirs.set_adapter}
    run = {"tuneforge": lambda: ours(input_ids=ids).logits, "peft": lambda: theirs(input_ids=ids).logits}
    switches = {side: [] for side in switch}
    forwards = {side: [] for side in switch}
    worst = 0.0
    forward_every = max(1, args.switches // args.forwards)
    with torch.no_grad():
        for side in switch:  # warm-up: first forward of each adapter
            for name in names:
                switch[side](name)
                run[side]()
        for i in range(args.switches):
            name = names[(i + 1) % len(names)]
            logits = {}
            for side in (("tuneforge", "peft") if i % 2 == 0 else ("peft", "tuneforge")):
                start = time.perf_counter()
                switch[side](name)
                switches[side].append(time.perf_counter() - start)
                if i % forward_every == 0:
                    start = time.perf_counter()
                    logits[side] = run[side]()
                    forwards[side].append(time.perf_counter() - start)
            if logits:
                worst = max(worst, (logits["tuneforge"] - logits["peft"]).abs().max().item())

    model = "tiny random Llama" if args.tiny else args.base
    print(f"{model}, {args.adapters} LoRA adapters (r={args.rank}, all-linear) in memory; torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.switches} switches per tool (cycling adapters), {len(forwards['tuneforge'])} followed by a forward "
          f"of 1 x {args.tokens} tokens; max |logits tuneforge - peft| after the same switch: {worst:.2e}")
    header = f"{'side':<10} {'switch median ms':>17} {'switch p95 ms':>14} {'forward median ms':>18} {'forward p95 ms':>15}"
    print(header)
    for side in switch:
        s, f = switches[side], forwards[side]
        print(f"{side:<10} {1e3 * statistics.median(s):>17.3f} {1e3 * percentile(s, 0.95):>14.3f} "
              f"{1e3 * statistics.median(f):>18.1f} {1e3 * percentile(f, 0.95):>15.1f}")
    target = 1e3 * statistics.median(switches["tuneforge"])
    print(f"target: switch < 5 ms -> {'met' if target < 5 else 'NOT met'} ({target:.2f} ms median)")


if __name__ == "__main__":
    main()
