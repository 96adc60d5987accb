"""dataset_info.json -> DatasetSpec, dataset_dir lookup, direct file paths, and the file loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.loaders import RawRow, first_row, iter_hub_rows, load_rows, sample_rows
from tuneforge.data.registry import Columns, Tags, load_dataset_specs, parse_entry
from tuneforge.errors import DataError, NotSupportedError

DATA = Path(__file__).resolve().parents[1] / "data"


def write_info(folder: Path, info) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset_info.json"
    path.write_text(info if isinstance(info, str) else json.dumps(info), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ registry
def test_every_key_parsed_and_partial_columns_tags_keep_defaults(tmp_path):
    info = {"chat": {
        "file_name": "chat.json", "formatting": "sharegpt", "ranking": True, "subset": "s", "split": "dev",
        "folder": "f", "num_samples": 10, "columns": {"messages": "turns", "system": "sys"},
        "tags": {"user_tag": "user"}, "file_sha1": "abc",
    }}
    write_info(tmp_path / "data", info)
    (spec,) = load_dataset_specs("chat", str(tmp_path / "data"), None)
    assert (spec.name, spec.load_from, spec.file_name, spec.formatting, spec.ranking) == (
        "chat", "file", "chat.json", "sharegpt", True)
    assert (spec.subset, spec.split, spec.folder, spec.num_samples) == ("s", "dev", "f", 10)
    assert spec.columns == Columns(messages="turns", system="sys")  # prompt/query/response still default
    assert spec.columns.prompt == "instruction"
    assert spec.tags == Tags(user_tag="user")
    assert spec.tags.assistant_tag == "gpt" and spec.tags.role_tag == "from"
    assert spec.local_path == tmp_path / "data" / "chat.json"
    with pytest.raises(Exception):
        spec.name = "other"  # frozen


def test_hub_precedence_and_openai_defaults(monkeypatch):
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    both = parse_entry("x", {"hf_hub_url": "a/b", "ms_hub_url": "c/d", "file_name": "x.json"}, None, None)
    assert (both.load_from, both.hf_hub_url) == ("hf_hub", "a/b")
    assert parse_entry("x", {"ms_hub_url": "c/d"}, None, None).load_from == "ms_hub"
    assert parse_entry("x", {"script_url": "dir", "file_name": "f"}, None, None).load_from == "script"
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert parse_entry("x", {"hf_hub_url": "a/b", "ms_hub_url": "c/d"}, None, None).load_from == "ms_hub"
    oa = parse_entry("x", {"file_name": "f", "formatting": "openai", "tags": {"observation_tag": "observation"}},
                     None, None)
    assert oa.columns.messages == "messages"
    assert (oa.tags.role_tag, oa.tags.content_tag, oa.tags.user_tag, oa.tags.observation_tag) == (
        "role", "content", "user", "observation")


@pytest.mark.parametrize("entry, message", [
    ({"file_name": "f", "colums": {}}, "dataset 'x' in None: unknown key 'colums' (did you mean 'columns'?)"),
    ({"file_name": "f", "columns": {"answer": "a"}}, "unknown key 'answer' in `columns`"),
    ({"file_name": "f", "tags": {"role": "r"}}, "unknown key 'role' in `tags`"),
    ({"file_name": "f", "formatting": "chatml"}, "formatting 'chatml' is not one of alpaca, sharegpt, openai"),
    ({"formatting": "alpaca"}, "needs one of file_name, hf_hub_url, ms_hub_url or script_url"),
    ({"file_name": "f", "num_samples": 0}, "num_samples must be a positive integer, found 0"),
])
def test_entry_errors(entry, message):
    with pytest.raises(DataError) as err:
        parse_entry("x", entry, None, None)
    assert message in str(err.value)


def test_video_and_audio_columns_not_supported():
    assert parse_entry("x", {"file_name": "f", "columns": {"images": "images"}}, None, None).columns.images == "images"
    for column in ("videos", "audios"):
        with pytest.raises(NotSupportedError, match=f"{column} columns are not supported yet"):
            parse_entry("x", {"file_name": "f", "columns": {"images": "images", column: column}}, None, None)


def test_malformed_dataset_info_names_line_and_col(tmp_path):
    path = write_info(tmp_path / "data", '{\n  "a": {"file_name": "a.json",}\n}')
    with pytest.raises(DataError) as err:
        load_dataset_specs(["a"], str(tmp_path / "data"), None)
    assert str(err.value).startswith(f"{path} line 2 col 31: invalid JSON")


def test_unknown_dataset_lists_close_names_and_file(tmp_path):
    path = write_info(tmp_path / "data", {"alpaca_en_demo": {"file_name": "a"}, "alpaca_zh_demo": {"file_name": "b"},
                                          "glaive": {"file_name": "c"}})
    with pytest.raises(DataError) as err:
        load_dataset_specs("alpaca_demo", str(tmp_path / "data"), None)
    assert str(err.value).startswith(
        f"dataset 'alpaca_demo' is not defined in {path}. Close names: alpaca_zh_demo, alpaca_en_demo.")


def test_dataset_dir_cwd_first_then_config_folder(tmp_path, monkeypatch):
    work, conf = tmp_path / "work", tmp_path / "conf"
    work.mkdir()
    write_info(conf / "data", {"d": {"file_name": "d.json"}})
    monkeypatch.chdir(work)
    (spec,) = load_dataset_specs("d", "data", conf)
    assert spec.dataset_dir == conf / "data"
    write_info(work / "data", {"d": {"file_name": "cwd.json"}})
    (spec,) = load_dataset_specs("d", "data", conf)
    assert spec.file_name == "cwd.json"


def test_dataset_dir_not_found_lists_every_path_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset_specs("d", "nowhere", tmp_path / "cfg")
    assert str(err.value).startswith(
        f"dataset_dir 'nowhere' not found. Tried: {tmp_path / 'nowhere'}, {tmp_path / 'cfg' / 'nowhere'}.")


def test_names_as_comma_string_or_list(tmp_path):
    write_info(tmp_path, {"a": {"file_name": "a"}, "b": {"file_name": "b"}})
    assert [s.name for s in load_dataset_specs("a, b", str(tmp_path), None)] == ["a", "b"]
    assert [s.name for s in load_dataset_specs(["b", "a"], str(tmp_path), None)] == ["b", "a"]
    assert load_dataset_specs(None, str(tmp_path), None) == []


# ------------------------------------------------------------------------------------ direct files
@pytest.mark.parametrize("name, content, formatting, prompt_column", [
    ("a.json", [{"instruction": "q", "input": "", "output": "a"}], "alpaca", "instruction"),
    ("s.jsonl", {"conversations": [{"from": "human", "value": "q"}]}, "sharegpt", "instruction"),
    ("o.json", [{"messages": [{"role": "user", "content": "q"}]}], "openai", "instruction"),
    ("t.jsonl", {"text": "doc"}, "alpaca", "text"),
    ("p.txt", "doc one\ndoc two\n", "alpaca", "text"),
])
def test_direct_file_path_format_detection(tmp_path, monkeypatch, name, content, formatting, prompt_column):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    (spec,) = load_dataset_specs(name, "data-does-not-exist", None)  # no dataset_info needed
    assert (spec.formatting, spec.columns.prompt, spec.load_from) == (formatting, prompt_column, "file")
    assert spec.local_path == path


def test_direct_file_missing_shows_paths_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_info(tmp_path / "data", {})
    with pytest.raises(DataError) as err:
        load_dataset_specs("missing.jsonl", "data", None)
    assert str(err.value) == (f"dataset file 'missing.jsonl' not found. Tried: {tmp_path / 'missing.jsonl'}, "
                              f"{tmp_path / 'data' / 'missing.jsonl'}")


def test_direct_file_missing_without_dataset_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset_specs("typo.json", "data", tmp_path / "cfg")
    assert str(err.value) == f"dataset file 'typo.json' not found. Tried: {tmp_path / 'typo.json'}, " \
                             f"{tmp_path / 'cfg' / 'typo.json'}"


def test_lf_keys_not_supported_yet():
    with pytest.raises(NotSupportedError, match="`cloud_file_name` is not supported yet"):
        parse_entry("x", {"cloud_file_name": "s3://b/f.json"}, None, None)



def test_om_hub_precedence(monkeypatch):  # LF: OpenMind when switched on or without hf_hub_url
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    assert parse_entry("x", {"om_hub_url": "a/b"}, None, None).load_from == "om_hub"
    assert parse_entry("x", {"om_hub_url": "a/b", "hf_hub_url": "c/d"}, None, None).load_from == "hf_hub"
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    assert parse_entry("x", {"om_hub_url": "a/b", "hf_hub_url": "c/d"}, None, None).load_from == "om_hub"
    assert parse_entry("x", {"om_hub_url": "a/b", "ms_hub_url": "e/f"}, None, None).load_from == "ms_hub"


def test_direct_file_unknown_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"q": 1}\n')
    with pytest.raises(DataError, match=r"cannot tell the data format from the first row \(keys: \['q'\]\)"):
        load_dataset_specs("x.jsonl", "data", None)


# ------------------------------------------------------------------------------------ loaders
def rows_of(path: Path) -> list[tuple]:
    spec = parse_entry("x", {"file_name": path.name}, path.parent, None)
    return [(r.values, r.source) for r in load_rows(spec)]


def test_json_list_jsonl_and_json_lines_in_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps([{"k": 1}, {"k": 2}]))
    assert rows_of(tmp_path / "a.json") == [({"k": 1}, "a.json row 1"), ({"k": 2}, "a.json row 2")]
    (tmp_path / "b.jsonl").write_text('{"k": 1}\n\n{"k": 2}\n')
    assert rows_of(tmp_path / "b.jsonl") == [({"k": 1}, "b.jsonl line 1"), ({"k": 2}, "b.jsonl line 3")]
    (tmp_path / "c.json").write_text('{"k": 1}\n{"k": 2}\n')
    assert rows_of(tmp_path / "c.json") == [({"k": 1}, "c.json line 1"), ({"k": 2}, "c.json line 2")]


@pytest.mark.parametrize("piece", [1, 5, 64, 1 << 20])
def test_a_json_list_is_read_a_piece_at_a_time_with_json_loads_rows_and_errors(tmp_path, monkeypatch, piece):
    """`.json` lists are decoded from pieces of the file: the rows of `json.loads`, and its line / column in errors,
    whatever the piece size (numbers cut at a piece's end, one-line files, BOM, Chinese)."""
    from tuneforge.data import loaders

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loaders, "JSON_READ_BYTES", piece)
    shipped = sorted(DATA.glob("*.json"))
    cases = {f"shipped-{path.name}": path.read_bytes() for path in shipped if path.name != "dataset_info.json"}
    cases.update({
        "numbers.json": b"[1, 23, 456, -7.5e3, true, null, \"x\"]",
        "minified.json": json.dumps([{"k": i, "v": "word " * i} for i in range(30)], separators=(",", ":")).encode(),
        "bom.json": b"\xef\xbb\xbf" + json.dumps([{"q": "\u4f60\u597d", "a": [1, {"b": []}]}], ensure_ascii=False,
                                                indent=2).encode(),
        "empty.json": b"  [ ]  ",
    })
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        expected = json.loads(content.decode("utf-8-sig"))
        assert [values for values, _ in rows_of(tmp_path / name)] == expected, name
    assert rows_of(tmp_path / "numbers.json")[2] == (456, "numbers.json row 3")
    for bad in (b'[\n {"k": 1},\n {"k" 2}\n]', b'[{"a":1},{"b":2} {"c":3}]', b'[{"a":1},]', b'[{"a": 1}', b"[1, 2",
                b'[{"a":1}] [2]', b'[{"a": "' + b"x" * 200 + b'"} {"b": 2}]'):
        (tmp_path / "bad.json").write_bytes(bad)
        with pytest.raises(DataError) as err:
            rows_of(tmp_path / "bad.json")
        try:
            json.loads(bad)
        except json.JSONDecodeError as expected_err:
            assert str(err.value).startswith(f"bad.json line {expected_err.lineno} col {expected_err.colno}: "), \
                (bad, str(err.value), expected_err)
    (tmp_path / "latin.json").write_bytes(b'[{"k": "caf\xe9"}]')
    with pytest.raises(DataError) as err:
        rows_of(tmp_path / "latin.json")
    assert str(err.value) == "latin.json: not UTF-8 text (invalid continuation byte at byte 11)"


def test_jsonl_is_read_a_line_at_a_time(tmp_path, monkeypatch):
    """Lines end at "\n" only (a raw U+2028 inside a string is text), a BOM and \r\n endings are fine, and a line
    that is not UTF-8 is named."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u.jsonl").write_bytes(b"\xef\xbb\xbf" + '{"k": "a\u2028b"}\r\n{"k": "c"}\n'.encode())
    assert rows_of(tmp_path / "u.jsonl") == [({"k": "a\u2028b"}, "u.jsonl line 1"), ({"k": "c"}, "u.jsonl line 2")]
    (tmp_path / "bad.jsonl").write_bytes(b'{"k": 1}\n{"k": "\xff"}\n')
    with pytest.raises(DataError) as err:
        rows_of(tmp_path / "bad.jsonl")
    assert str(err.value).startswith("bad.jsonl line 2: not UTF-8 text (invalid start byte at byte 7 of the line)")


def test_malformed_json_names_file_line_col(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"k": 1}\n{"k": 2,}\n')
    with pytest.raises(DataError) as err:
        rows_of(tmp_path / "bad.jsonl")
    assert str(err.value).startswith("bad.jsonl line 2 col 9: invalid JSON")
    (tmp_path / "bad.json").write_text('[\n {"k": 1},\n {"k" 2}\n]')
    with pytest.raises(DataError) as err:
        rows_of(tmp_path / "bad.json")
    assert str(err.value).startswith("bad.json line 3 col 7: invalid JSON")


def test_csv_parquet_txt_and_folder(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.csv").write_text("instruction,output\nq1,a1\nq2,a2\n")
    assert rows_of(tmp_path / "a.csv") == [({"instruction": "q1", "output": "a1"}, "a.csv row 1"),
                                           ({"instruction": "q2", "output": "a2"}, "a.csv row 2")]
    pq.write_table(pa.Table.from_pylist([{"text": "x"}, {"text": "y"}]), tmp_path / "a.parquet")
    assert rows_of(tmp_path / "a.parquet") == [({"text": "x"}, "a.parquet row 1"), ({"text": "y"}, "a.parquet row 2")]
    (tmp_path / "a.txt").write_text("first\n\nsecond\n")
    assert rows_of(tmp_path / "a.txt") == [({"text": "first"}, "a.txt line 1"), ({"text": "second"}, "a.txt line 3")]
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "2.jsonl").write_text('{"k": 2}\n')
    (folder / "1.jsonl").write_text('{"k": 1}\n')
    assert rows_of(folder) == [({"k": 1}, "parts/1.jsonl line 1"), ({"k": 2}, "parts/2.jsonl line 1")]
    assert first_row(folder) == {"k": 1}
    (folder / "3.csv").write_text("k\n3\n")
    with pytest.raises(DataError, match=r"dataset folder parts mixes file types \['.csv', '.jsonl'\]"):
        rows_of(folder)


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="dataset file nope.json not found"):
        rows_of(tmp_path / "nope.json")


def test_hub_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = parse_entry("remote_ds", {"hf_hub_url": "someone/never-downloaded-ds-xyz"}, None, None)
    with pytest.raises(DataError) as err:
        list(iter_hub_rows(spec))
    assert str(err.value) == (
        "could not download dataset remote_ds from the Hugging Face Hub (someone/never-downloaded-ds-xyz): no "
        "network access. Download it elsewhere and point `file_name` to the local copy.")


def test_ms_hub_without_modelscope():
    spec = parse_entry("ms", {"ms_hub_url": "a/b"}, None, None)
    try:
        import modelscope  # noqa: F401
        pytest.skip("modelscope installed")
    except ImportError:
        pass
    with pytest.raises(DataError, match=r"needs the `modelscope` package, which is not installed: pip install 'tuneforge\[modelscope\]'"):
        list(iter_hub_rows(spec))


def test_sample_rows_num_samples_and_max_samples():
    rows = [RawRow({"i": i}, f"r{i}") for i in range(5)]
    picked = sample_rows(rows, 3, None, seed=0)
    assert len(picked) == 3 and len({r.source for r in picked}) == 3  # a permutation: no repeats
    over = sample_rows(rows, 12, None, seed=0)
    assert len(over) == 12 and {r.source for r in over} == {f"r{i}" for i in range(5)}  # every row kept
    assert sample_rows(rows, 12, None, seed=0) == over  # seeded
    assert sample_rows(rows, None, 2, seed=0) == rows[:2]
    assert sample_rows(rows, 4, 2, seed=0) == sample_rows(rows, 4, None, seed=0)[:2]  # sample, then first N
