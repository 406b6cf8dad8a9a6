"""`NAME:SPLIT` references: the resolution order and the message when a reference is mistyped."""
import pytest

from tuneforge.config.data_sets import resolve_data_path
from tuneforge.errors import ConfigError


def _full_data(tmp_path):
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "alpaca" / "validation.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    return tmp_path


def test_a_reference_reads_the_full_data_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA", str(_full_data(tmp_path)))
    assert resolve_data_path("alpaca:train") == str(tmp_path / "alpaca" / "train.jsonl")


def test_an_existing_path_is_used_as_given(tmp_path):
    path = tmp_path / "x:y"
    path.write_text("")
    assert resolve_data_path(str(path)) == str(path)


def test_a_mistyped_name_suggests_the_closest_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA", str(_full_data(tmp_path)))
    with pytest.raises(ConfigError, match=r"did you mean alpaca:train\?") as error:
        resolve_data_path("alpaka:train", key="data.train")
    assert "data.train" in str(error.value)


def test_a_mistyped_split_suggests_the_closest_split(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA", str(_full_data(tmp_path)))
    with pytest.raises(ConfigError, match=r"did you mean alpaca:validation\?"):
        resolve_data_path("alpaca:valdation")


def test_an_unknown_split_lists_the_splits_there_are(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA", str(_full_data(tmp_path)))
    with pytest.raises(ConfigError, match=r"alpaca has the splits .*train.*validation"):
        resolve_data_path("alpaca:zzzz")


def test_a_data_folder_that_is_not_there_is_an_error_not_a_slice(tmp_path, monkeypatch):
    """A mistyped or wrongly relative $TUNEFORGE_DATA must not quietly turn a full-data run into a slice run."""
    monkeypatch.setenv("TUNEFORGE_DATA", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"TUNEFORGE_DATA.*missing.*not a folder") as error:
        resolve_data_path("alpaca:train", key="data.train")
    assert "data.train" in str(error.value)
