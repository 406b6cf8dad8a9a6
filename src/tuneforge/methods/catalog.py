"""What `tuneforge methods` shows: every registered method with its kind, whether it merges, the formula of
its trainable parameters, its paper and peft's name for it. Built from the class facts, so it never drifts."""
from __future__ import annotations

import dataclasses

from ..registry import METHODS


def describe_methods() -> list[dict]:
    rows = []
    for name, cls in METHODS.items():
        doc = (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__ or "").strip()
        rows.append({
            "name": name,
            "kind": cls.kind,
            "mergeable": bool(cls.mergeable),
            "trainable_parameters": cls.formula,
            "paper": cls.paper,
            "peft_type": cls.peft_type,
            "summary": doc.splitlines()[0] if doc else "",
            "fields": [f.name for f in dataclasses.fields(cls.config_class)],
        })
    return rows


def methods_table(rows: list[dict] | None = None, markdown: bool = False) -> str:
    rows = describe_methods() if rows is None else rows
    header = ["method", "kind", "mergeable", "trainable parameters", "paper"]
    body = [[r["name"], r["kind"], "yes" if r["mergeable"] else "no", r["trainable_parameters"], r["paper"]]
            for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*map(str, row)) for row in body])
