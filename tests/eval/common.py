"""Helpers shared by the evaluation tests."""
import json


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def summary_task(files, **overrides):
    task = {"name": "sum", "data": files["sum_val"], "prompt": "Summarize: {document}", "target": "{summary}",
            "references": "references", "metrics": ["rouge", "bleu", "chrf", "exact_match", "loss"],
            "demonstrations": files["sum_train"], "max_new_tokens": 4}
    task.update(overrides)
    return task
