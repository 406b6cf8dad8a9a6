"""The digits transfer learning curve: every method of configs/compare/digits_transfer_resnet.yaml at several
numbers of labels per digit, each with its learning rate (feature_based: C) chosen on held-out tuning images.

    python benchmarks/digits_curve.py [--per-class 1,3,10] [--seeds 0,1,2] [--out runs/digits/curve]
                                      [--model runs/digits/pretrain-rot/model]   (another pretrained start)
                                      [--base CONFIG --tune FOLDER --test FOLDER]  (another comparison, e.g.
        configs/compare/digits10_transfer_glyphs.yaml: the letters-pretrained start, all ten digits)

For each number of labels K: (1) `compare --seeds` of every method at every value of its grid, evaluated on
data/digits/transfer/tune (100 images never used for the final figures); (2) per method the value with the best
mean accuracy over the seeds; (3) `compare --seeds` of the methods at their chosen values, evaluated on
data/digits/transfer/test (696 images). Writes OUT/curve.md and OUT/curve.json: per K and method the test
accuracy (mean +- std over seeds), the chosen value, and the paired difference to scratch over the seeds (the
same labelled draw per seed) with a t interval over seeds, which, unlike the bootstrap over test images, includes
the variation of which few images were labelled. Finished runs are reused (compare's cache), so an interrupted
curve resumes. Needs runs/digits/pretrain/model and runs/digits/resnet-scratch (see the config's header).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import yaml

BASE = "configs/compare/digits_transfer_resnet.yaml"
TUNE, TEST = "data/digits/transfer/tune", "data/digits/transfer/test"
LR = (1.0e-3, 3.0e-3, 1.0e-2)
LR_HIGH = (3.0e-3, 1.0e-2, 3.0e-2)
GRIDS = {"scratch": LR, "head_only": (3.0e-3, 1.0e-2, 3.0e-2, 1.0e-1), "feature_based": (1.0, 10.0, 100.0, 1000.0),
         "lora": LR_HIGH, "bitfit": (3.0e-3, 1.0e-2, 3.0e-2, 1.0e-1)}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _label(entry: dict) -> str:
    return entry.get("label", entry["name"])


def _with_value(entry: dict, value: float) -> dict:
    out = copy.deepcopy(entry)
    if out["name"] == "feature_based":
        out["C"] = value
    else:
        out["train"] = {**out.get("train", {}), "learning_rate": value}
    return out


def _run(config: dict, path: Path, seeds: str) -> dict:
    from tuneforge.eval.compare import compare_seeds

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    runs = compare_seeds(str(path), seeds)
    found = json.loads((Path(config["output_dir"]) / "seeds.json").read_text())
    rows = next(iter(runs["per_seed"].values()))["rows"]  # trainable parameters: the same for every seed
    for m in found["methods"]:
        row = next(r for r in rows if r["label"] == m["label"])
        m["trainable"], m["total"] = row["trainable"], row["total"]
    return found


def curve(per_class: list[int], seeds: str, out: Path, model: str | None = None, base_path: str = BASE,
          tune_data: str = TUNE, test_data: str = TEST) -> dict:
    base = yaml.safe_load(Path(base_path).read_text())
    if model is not None:  # the pretrained start of every row but scratch (a head of another size is replaced)
        base["model"]["name"] = model
    result = {}
    for k in per_class:
        shared = {key: copy.deepcopy(v) for key, v in base.items() if key != "methods"}
        shared["task"]["train_per_class"] = k
        grid_entries, choices = [], {}
        for entry in base["methods"]:
            for value in GRIDS.get(_label(entry), GRIDS.get(entry["name"], LR)):
                grid_entries.append({**_with_value(entry, value), "label": f"{_label(entry)} @ {value:g}"})
        tune = {**copy.deepcopy(shared), "data": {**shared["data"], "validation": tune_data},
                "output_dir": str(out / f"k{k}" / "tune"), "methods": grid_entries}
        scores = {m["label"]: m["mean"] for m in _run(tune, out / f"k{k}" / "tune.yaml", seeds)["methods"]}
        chosen = []
        for entry in base["methods"]:
            values = GRIDS.get(_label(entry), GRIDS.get(entry["name"], LR))
            best = max(values, key=lambda v: scores[f"{_label(entry)} @ {v:g}"])
            choices[_label(entry)] = best
            chosen.append(_with_value(entry, best))
        test = {**copy.deepcopy(shared), "data": {**shared["data"], "validation": test_data},
                "output_dir": str(out / f"k{k}" / "test"), "methods": chosen}
        methods = _run(test, out / f"k{k}" / "test.yaml", seeds)["methods"]
        scratch = next(m for m in methods if m["label"] == "scratch")
        rows = []
        for m in methods:
            diffs = [m["per_seed"][s] - scratch["per_seed"][s] for s in m["per_seed"]]
            mean = statistics.fmean(diffs)
            half = T975[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
            rows.append({"label": m["label"], "mean": m["mean"], "std": m["std"], "per_seed": m["per_seed"],
                         "trainable": m["trainable"], "trainable_pct": 100.0 * m["trainable"] / max(1, m["total"]),
                         "chosen": choices[m["label"]], "tune_mean": scores[f"{m['label']} @ {choices[m['label']]:g}"],
                         "vs_scratch": mean, "vs_scratch_low": None if half is None else mean - half,
                         "vs_scratch_high": None if half is None else mean + half})
        result[k] = rows
    _write(result, out, seeds, test_data)
    return result


def _write(result: dict, out: Path, seeds: str, test_data: str) -> None:
    lines = [f"# test accuracy on {test_data} by labels per class, seeds {seeds}", "",
             f"pretrained start: `{yaml.safe_load((out / f'k{next(iter(result))}' / 'test.yaml').read_text())['model']['name']}`", "",
             "| labels per class | method | trainable | chosen lr (C) | accuracy mean ± std | vs scratch, paired [95% t "
             "interval over seeds] |", "|---:|---|---:|---:|---:|---:|"]
    for k, rows in result.items():
        for r in rows:
            vs = "-" if r["label"] == "scratch" else (
                f"{r['vs_scratch']:+.3f}" + ("" if r["vs_scratch_low"] is None else
                                              f" [{r['vs_scratch_low']:+.3f}, {r['vs_scratch_high']:+.3f}]"))
            lines.append(f"| {k} | {r['label']} | {r['trainable']:,} ({r['trainable_pct']:.3g}%) | {r['chosen']:g} | "
                         f"{r['mean']:.3f} ± {r['std']:.3f} | {vs} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", default="1,3,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/digits/curve")
    parser.add_argument("--model", default=None, help="pretrained start (default: the config's)")
    parser.add_argument("--base", default=BASE, help="the compare config whose methods are tuned and tested")
    parser.add_argument("--tune", default=TUNE, help="image folder the learning rates are chosen on")
    parser.add_argument("--test", default=TEST, help="image folder the chosen values are scored on")
    args = parser.parse_args()
    curve([int(x) for x in args.per_class.split(",")], args.seeds, Path(args.out), args.model, args.base,
          args.tune, args.test)
