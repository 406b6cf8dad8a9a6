"""Hugging Face `datasets` sources as data.train / data.validation, built locally (tests stay offline)."""
import json
import time

import pytest

from tuneforge.config import config_from_dict
from tuneforge.data import DataConfig, load_examples, read_source
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.tiny import tiny_tokenizer

datasets = pytest.importorskip("datasets")

CHATS = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
         for i in range(8)]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    return path


def examples_of(source, tok, **cfg):
    return load_examples(DataConfig(train=str(source), **cfg), tok)


def test_saved_dataset_and_dataset_dict_give_what_the_file_gives(tmp_path, jsonl, tok):
    want = examples_of(jsonl, tok)
    ds = datasets.Dataset.from_list(CHATS)
    ds.save_to_disk(str(tmp_path / "single"))
    assert examples_of(tmp_path / "single", tok) == want
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(2))})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert examples_of(tmp_path / "dict", tok) == want
    assert len(examples_of(tmp_path / "dict", tok, split="test")) == 2
    with pytest.raises(DataError, match="split 'dev' not found; the dataset has: train, test"):
        examples_of(tmp_path / "dict", tok, split="dev")
    assert examples_of(tmp_path / "dict", tok, limit_train=3) == load_examples(
        DataConfig(train=str(jsonl), limit_train=3), tok)  # the same seeded subset


def test_parquet_glob_arrow_file_and_json_folder(tmp_path, jsonl, tok):
    want = examples_of(jsonl, tok)
    ds = datasets.Dataset.from_list(CHATS)
    (tmp_path / "pq").mkdir()
    ds.select(range(4)).to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    ds.select(range(4, 8)).to_parquet(str(tmp_path / "pq" / "part-1.parquet"))
    assert examples_of(str(tmp_path / "pq" / "*.parquet"), tok) == want
    assert examples_of(tmp_path / "pq", tok) == want  # a folder of data files
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert examples_of(arrow, tok) == want
    with pytest.raises(DataError, match="no files match"):
        examples_of(str(tmp_path / "pq" / "*.json"), tok)


def test_bad_row_names_dataset_split_and_row(tmp_path, tok):
    rows = CHATS[:3] + [{"messages": [{"role": "user", "content": "q"}]}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError) as info:
        examples_of(tmp_path / "d", tok)
    assert info.value.line == 3 and info.value.key == "messages"
    assert f"{tmp_path / 'd'} [train] row 3" in str(info.value) and "no assistant" in str(info.value)


def test_hub_id_fails_clearly_offline_without_hanging(tok):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        read_source("some-org/surely-not-cached-dataset", split="train")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "some-org/surely-not-cached-dataset" in message and "offline" in message


def test_missing_path_is_not_taken_for_a_hub_id(tmp_path, tok):
    with pytest.raises(DataError, match="file not found"):
        read_source(str(tmp_path / "nope" / "train.jsonl"))


def test_streaming_reads_only_what_the_steps_need(tmp_path, tok):
    many = [{"text": f"document number {i} " * 3} for i in range(200)]
    datasets.Dataset.from_list(many).save_to_disk(str(tmp_path / "big"))
    cfg = DataConfig(train=str(tmp_path / "big"), streaming=True, max_length=64, packing=False)
    assert len(load_examples(cfg, tok, budget_rows=6)) == 6
    stats = {}
    packed = load_examples(DataConfig(train=str(tmp_path / "big"), streaming=True, max_length=64), tok,
                           stats=stats, budget_rows=4)
    assert sum(len(e["input_ids"]) for e in packed) >= 4 * 64 and len(stats["lengths"]) < len(many)
    limited = load_examples(DataConfig(train=str(tmp_path / "big"), streaming=True, limit_train=5), tok)
    assert len(limited) == 5


def test_streaming_needs_max_steps():
    with pytest.raises(ConfigError, match="train.max_steps") as info:
        config_from_dict({"data": {"train": "org/name", "streaming": True}})
    assert info.value.key == "data.streaming"
    cfg = config_from_dict({"data": {"train": "org/name", "streaming": True}, "train": {"max_steps": 3}})
    assert cfg.data.streaming


def test_sft_task_streams_a_budget(tmp_path, tok):
    from tuneforge.train.tasks.sft import SFTTask

    datasets.Dataset.from_list(CHATS * 20).save_to_disk(str(tmp_path / "chats"))
    cfg = config_from_dict({"data": {"train": str(tmp_path / "chats"), "streaming": True, "packing": False},
                            "train": {"max_steps": 2, "micro_batch_size": 3, "grad_accum_steps": 2}})
    train, _ = SFTTask(pad_token_id=tok.pad_token_id).prepare(cfg, tok)
    assert len(train) == 2 * 3 * 2


def test_row_zero_and_record_lists_for_other_tasks(tmp_path, jsonl):
    from tuneforge.data.loading import load_records

    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "q"}]}] + CHATS).save_to_disk(
        str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"\[train\] row 0") as info:
        examples_of(tmp_path / "d", tiny_tokenizer())
    assert info.value.line == 0
    datasets.Dataset.from_list(CHATS).save_to_disk(str(tmp_path / "same"))
    records, source = load_records(DataConfig(train=str(tmp_path / "same"), limit_train=3), "train")
    file_records, _ = load_records(DataConfig(train=str(jsonl), limit_train=3), "train")
    assert records == file_records and str(source) == f"{tmp_path / 'same'} [train]"
