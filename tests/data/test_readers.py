"""Every bad input names its file and line, so a broken record in 50k can be found without bisecting."""
import json

import pytest

from tuneforge.data import read_records, require_fields
from tuneforge.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_reads_objects_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n\n{"a": 2, "b": "x"}\n')
    records = read_records(path)
    assert records == [{"a": 1}, {"a": 2, "b": "x"}]
    assert [r.line for r in records] == [1, 3]


def test_json_array_keeps_start_lines(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"a": 1},\n  {"a": 2,\n   "b": 3}\n]\n')
    records = read_records(path)
    assert records == [{"a": 1}, {"a": 2, "b": 3}]
    assert [r.line for r in records] == [2, 3]


def test_json_named_file_holding_json_lines(tmp_path):
    assert read_records(write(tmp_path, "d.json", '{"a": 1}\n{"a": 2}\n')) == [{"a": 1}, {"a": 2}]


def test_csv_rows_and_multiline_cells(tmp_path):
    path = write(tmp_path, "d.csv", 'instruction,output\nhi,"two\nlines"\nbye,ok\n')
    records = read_records(path)
    assert records == [{"instruction": "hi", "output": "two\nlines"}, {"instruction": "bye", "output": "ok"}]
    assert [r.line for r in records] == [2, 4]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b"], "output": ["x", "y"]}), path)
    records = read_records(path)
    assert records == [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "y"}]
    assert [r.line for r in records] == [1, 2]


def check_error(path, line, *fragments):
    with pytest.raises(DataError) as info:
        read_records(path)
    err = info.value
    assert err.file == path and err.line == line
    text = str(err)
    assert str(path) in text and (line is None or f":{line}" in text)
    for fragment in fragments:
        assert fragment in text
    return err


def test_malformed_json_line_gives_line_and_json_error(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3,}\n')
    check_error(path, 3, "malformed JSON", "Expecting property name")


def test_line_that_is_not_an_object(tmp_path):
    check_error(write(tmp_path, "d.jsonl", '{"a": 1}\n[1, 2]\n'), 2, "expected a JSON object", "list")


def test_json_array_element_not_object_and_malformed(tmp_path):
    check_error(write(tmp_path, "d.json", '[{"a": 1},\n "text"]'), 2, "expected a JSON object")
    check_error(write(tmp_path, "e.json", '[{"a": 1},\n\n {"a": }]'), 3, "malformed JSON")
    check_error(write(tmp_path, "f.json", '[{"a": 1}\n {"a": 2}]'), 2, "expected ','")


@pytest.mark.parametrize("name,text", [("d.jsonl", ""), ("d.jsonl", "\n  \n"), ("d.json", "[]"),
                                       ("d.csv", "instruction,output\n")])
def test_empty_file(tmp_path, name, text):
    check_error(write(tmp_path, name, text), None, "data set is empty")


def test_missing_file_and_unsupported_suffix(tmp_path):
    check_error(tmp_path / "nope.jsonl", None, "file not found")
    check_error(write(tmp_path, "d.txt", "hi"), None, "unsupported file type", ".jsonl")


def test_csv_row_with_too_many_cells(tmp_path):
    check_error(write(tmp_path, "d.csv", "a,b\n1,2\n1,2,3\n"), 3, "cells")


def test_not_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    check_error(path, 2, "not UTF-8")


def test_corrupt_parquet(tmp_path):
    check_error(write(tmp_path, "d.parquet", "not parquet"), None, "cannot read parquet")


def test_require_fields_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in [{"a": 1, "b": 2}, {}, {"a": 3}]))
    records = read_records(path)
    require_fields(records[:1], ["a", "b"], path)
    with pytest.raises(DataError) as info:
        require_fields(records[2:], ["a", "b"], path)
    assert (info.value.file, info.value.line, info.value.key) == (path, 3, "b")
    assert f"{path}:3" in str(info.value) and "'b'" in str(info.value)


def test_require_fields_on_plain_dicts_uses_record_number():
    with pytest.raises(DataError) as info:
        require_fields([{"a": 1}, {"b": 1}], ["a"], "mem")
    assert info.value.line == 2 and info.value.key == "a"


def test_jsonl_with_unicode_line_separator_inside_a_string_and_crlf(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"a": "x\u2028y"}\r\n{"a": 2}\r\n')
    assert read_records(path) == [{"a": "x\u2028y"}, {"a": 2}]
