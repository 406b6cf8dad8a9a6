"""Templated records (any fields -> one user turn + one reply) and multi-task mixtures (rates, counts, tags)."""
import json
from collections import Counter

import pytest

from tuneforge.config import load_config
from tuneforge.data import DataConfig, DataSource, build_sft_examples, fill_template, load_examples, mixing_rates, to_messages
from tuneforge.data.mixing import draw, mixture_counts
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.tiny import tiny_tokenizer

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_fill_template_fields_braces_and_errors():
    assert fill_template("Sum:\n{document} {{x}}", {"document": "abc"}) == "Sum:\nabc {x}"
    assert fill_template("label {label}", {"label": 1}) == "label 1"
    with pytest.raises(DataError) as info:
        fill_template("{summary}", {"document": "d"}, source="s.jsonl", line=7)
    assert (info.value.file, info.value.line, info.value.key) == ("s.jsonl", 7, "summary")
    assert "document" in str(info.value)  # says which fields the record does have
    with pytest.raises(DataError, match="cannot fill"):
        fill_template("{", {}, source="s.jsonl", line=2)


def test_template_records_become_one_exchange(tok):
    rec = {"document": "A long abstract.", "summary": "Short."}
    messages = to_messages(rec, prompt="Summarize:\n{document}", target="{summary}", system_prompt="Be brief.")
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Summarize:\nA long abstract."},
                        {"role": "assistant", "content": "Short."}]
    cfg = DataConfig(prompt="Summarize:\n{document}", target="{summary}")
    ex = build_sft_examples([rec], tok, cfg)[0]
    trained = tok.decode([t for t in ex["labels"] if t != IGNORE])
    assert trained.startswith("Short.") and "abstract" not in trained  # loss on the reply only


def test_template_config_validation():
    DataConfig(prompt="{a}", target="{b}").validate()
    DataConfig(format="template", prompt="{a}", target="{b}").validate()
    for bad, key in [(dict(format="template"), "prompt"), (dict(prompt="{a}"), "target"),
                     (dict(target="{b}"), "prompt"), (dict(format="alpaca", prompt="{a}", target="{b}"), "format")]:
        with pytest.raises(ConfigError) as info:
            DataConfig(**bad).validate()
        assert info.value.key == key


def test_mixing_rates_formulas():
    assert mixing_rates([300, 100]) == pytest.approx([0.75, 0.25])
    # temperature T: r proportional to p^(1/T); T=1 is proportional, large T tends to equal shares
    assert mixing_rates([300, 100], "temperature", temperature=1.0) == pytest.approx([0.75, 0.25])
    t2 = mixing_rates([300, 100], "temperature", temperature=2.0)
    assert t2 == pytest.approx([0.75 ** 0.5 / (0.75 ** 0.5 + 0.25 ** 0.5), 0.25 ** 0.5 / (0.75 ** 0.5 + 0.25 ** 0.5)])
    assert mixing_rates([300, 100], "temperature", temperature=1e6) == pytest.approx([0.5, 0.5], abs=1e-5)
    assert mixing_rates([300, 100], cap=100) == pytest.approx([0.5, 0.5])  # examples-proportional cap K
    assert mixing_rates([300, 100], "explicit", weights=[1, 3]) == pytest.approx([0.25, 0.75])
    with pytest.raises(ConfigError):
        mixing_rates([1, 1], "explicit", weights=[1, None])


def test_counts_and_draw():
    assert mixture_counts([0.5, 0.3, 0.2], 11) == [6, 3, 2] and sum(mixture_counts([1 / 3] * 3, 10)) == 10
    import random

    items = list(range(4))
    got = draw(items, 10, random.Random(0))
    assert Counter(got) == Counter({0: 3, 1: 3, 2: 2, 3: 2}) or sorted(Counter(got).values()) == [2, 2, 3, 3]
    assert len(set(draw(items, 3, random.Random(0)))) == 3  # no repeats while enough exist


@pytest.fixture
def mixture_files(tmp_path):
    summaries = write(tmp_path / "sum.jsonl", [{"document": f"doc {i}", "summary": f"s{i}"} for i in range(30)])
    sum_val = write(tmp_path / "sum_val.jsonl", [{"document": f"val {i}", "summary": f"v{i}"} for i in range(4)])
    instructions = write(tmp_path / "inst.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)])
    return summaries, sum_val, instructions


def test_mixture_draws_each_source_with_its_own_template(tok, mixture_files):
    summaries, sum_val, instructions = mixture_files
    cfg = DataConfig(mixture=[
        DataSource(name="sum", train=summaries, validation=sum_val, prompt="Summarize: {document}", target="{summary}"),
        DataSource(name="inst", train=instructions, format="alpaca", train_on="all"),
    ], mixing="explicit", mixture_size=20)
    cfg.mixture[0].weight, cfg.mixture[1].weight = 1.0, 1.0
    cfg.validate()
    stats = {}
    train = load_examples(cfg, tok, "train", stats=stats)
    assert stats["counts"] == {"sum": 10, "inst": 10} and len(train) == 20
    by_source = Counter(ex["source"] for ex in train)
    assert by_source == {"sum": 10, "inst": 10}
    inst = next(ex for ex in train if ex["source"] == "inst")
    assert all(label != IGNORE for label in inst["labels"][1:])  # train_on: all for this source only
    summary = next(ex for ex in train if ex["source"] == "sum")
    assert "Summarize" in tok.decode(summary["input_ids"]) and IGNORE in summary["labels"][1:]
    val = load_examples(cfg, tok, "validation")
    assert [ex["source"] for ex in val] == ["sum"] * 4  # validation sets concatenated, unsampled


def test_proportional_mixture_keeps_every_example_once(tok, mixture_files):
    summaries, _, instructions = mixture_files
    cfg = DataConfig(mixture=[DataSource(name="sum", train=summaries, prompt="{document}", target="{summary}"),
                              DataSource(name="inst", train=instructions, limit_train=6)])
    stats = {}
    train = load_examples(cfg, tok, "train", stats=stats)
    assert stats["sources"] == {"sum": 30, "inst": 6} and Counter(ex["source"] for ex in train) == {"sum": 30, "inst": 6}
    assert len({tuple(ex["input_ids"]) for ex in train}) == 36


def test_mixture_yaml_errors_name_file_line_key(tmp_path, mixture_files):
    summaries, _, instructions = mixture_files
    text = f"""data:
  mixture:
    - name: sum
      train: {summaries}
      prompt: "{{document}}"
      target: "{{summary}}"
    - name: inst
      train: {instructions}
  mixing: explicit
"""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and info.value.line == 2 and "weight" in str(info.value)
    path.write_text(text.replace("mixing: explicit", "mixing: proportional").replace("      train: " + instructions,
                                                                                    "      train: x\n      wieght: 2"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "wieght" in str(info.value) and "weight" in str(info.value)
    path.write_text(text.replace("mixing: explicit", f"train: {summaries}"))
    with pytest.raises(ConfigError, match="not both"):
        load_config(path)


def test_sft_task_prepares_a_mixture(tok, mixture_files):
    from tuneforge.config import config_from_dict
    from tuneforge.train.tasks.sft import SFTTask

    summaries, sum_val, instructions = mixture_files
    cfg = config_from_dict({"data": {"mixture": [
        {"name": "sum", "train": summaries, "validation": sum_val, "prompt": "{document}", "target": "{summary}"},
        {"name": "inst", "train": instructions, "format": "alpaca"}], "max_length": 64, "packing": True}})
    train, val = SFTTask().prepare(cfg, tok)
    assert sum(len(row["seq_lens"]) for row in train) == 40 and sum(len(row["seq_lens"]) for row in val) == 4
