"""Data mistakes that used to train silently wrong: a `columns` mapping naming a column the file does
not have, messages without text and rows with nothing to train on, and files starting with a UTF-8
byte order mark (refused before, read now)."""

from __future__ import annotations

import json

import pytest

from conftest import data_run_config

from tuneforge.data.loaders import load_rows
from tuneforge.data.pipeline import build_datasets
from tuneforge.data.registry import load_dataset_specs, parse_entry
from tuneforge.errors import DataError

BOM = "\ufeff"
ALPACA = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forgey.", "system": "Be brief."},
    {"instruction": "Add.", "input": "2 and 3", "output": "5", "history": [["Hi", "Hello"]]},
]


class TokTemplate:
    """prompt ids = tokens of "Q:<user>\\n", response ids = tokens of the answer + eos."""

    name, efficient_eos, default_system, stop_words = "tok", False, "", ()

    def encode_multiturn(self, tokenizer, messages, system=None, tools=None):
        enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return [(enc(f"Q:{messages[i].content}\n"), enc(messages[i + 1].content) + [tokenizer.eos_token_id])
                for i in range(0, len(messages), 2)]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "alp.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    return tmp_path


def register(workdir, **entries):
    (workdir / "data" / "dataset_info.json").write_text(json.dumps(entries), encoding="utf-8")


def make_cfg(dataset, **data):
    return data_run_config(dataset, seed=42, **{"cutoff_len": 64, **data})


# ------------------------------------------------------------------------ 7. mapping vs actual columns
@pytest.mark.parametrize("key, column", [
    ("prompt", "question"),  # before: every row trained with an empty prompt ("input" alone)
    ("query", "context"),
    ("response", "answer"),
    ("system", "sys"),  # before: no system prompt, silently
    ("history", "turns"),
])
def test_mapping_names_a_column_the_file_does_not_have(workdir, tiny_tokenizer, key, column):
    register(workdir, alp={"file_name": "alp.json", "columns": {key: column}})
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    assert str(err.value) == (
        f"dataset 'alp' in {workdir / 'data' / 'dataset_info.json'}: `columns` maps {key} -> '{column}', but no "
        "row of data/alp.json has that column; its columns are 'instruction', 'input', 'output', 'system', "
        "'history'. Fix the mapping, or remove it from `columns`.")


def test_every_wrong_mapping_is_named_at_once_for_sharegpt(workdir, tiny_tokenizer):
    (workdir / "data" / "chat.jsonl").write_text(json.dumps(
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) + "\n")
    register(workdir, chat={"file_name": "chat.jsonl", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "system": "system_prompt"}})
    with pytest.raises(DataError, match=r"`columns` maps messages -> 'messages', system -> 'system_prompt', but no "
                                        r"row of data/chat.jsonl has these columns; its columns are 'conversations'\."):
        build_datasets(make_cfg("chat"), tiny_tokenizer, TokTemplate())


def test_optional_columns_may_be_absent_from_some_rows_or_unlisted(workdir, tiny_tokenizer):
    """The rule: a column the entry lists must be in at least one row (the file's schema, as HF datasets
    reads it). Absent from some rows only is fine (LF: system/history on a few rows); defaults the entry
    does not list (alpaca's `input`) and columns the format does not read are not checked."""
    (workdir / "data" / "plain.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    register(workdir,
             alp={"file_name": "alp.json", "columns": {"prompt": "instruction", "system": "system", "history": "history"}},
             plain={"file_name": "plain.json", "columns": {"messages": "not_read_by_alpaca"}})
    bundle = build_datasets(make_cfg("alp,plain"), tiny_tokenizer, TokTemplate())
    assert len(bundle.train) == 3


def test_hub_dataset_columns_are_checked_the_same_way():
    from tuneforge.data.formats import check_column_mapping
    from tuneforge.data.loaders import origin_of

    spec = parse_entry("remote", {"hf_hub_url": "someone/qa", "columns": {"prompt": "question"}}, None, None)
    assert origin_of(spec) == "someone/qa"
    with pytest.raises(DataError, match=r"^dataset 'remote': `columns` maps prompt -> 'question', but no row "
                                        r"of someone/qa has that column; its columns are 'q', 'a'\."):
        check_column_mapping(spec, [{"q": "x", "a": "y"}], origin_of(spec))


# ------------------------------------------------------------------------ 8. bad rows are reported
def test_null_text_and_empty_rows_are_dropped_and_reported(workdir, tiny_tokenizer):
    rows = [
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": None}]},
        {"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": ""}]},
    ]
    (workdir / "data" / "chat.json").write_text(json.dumps(rows))
    register(workdir, chat={"file_name": "chat.json", "formatting": "sharegpt"})
    bundle = build_datasets(make_cfg("chat"), tiny_tokenizer, TokTemplate())
    chat = bundle.report.stats("chat")
    assert (chat.rows_read, chat.kept, dict(chat.dropped)) == (3, 1, {"invalid sharegpt row": 2})
    assert chat.refs["invalid sharegpt row"] == [
        "data/chat.json row 2 (message 1 (gpt): its 'value' (content_tag) is null)",
        "data/chat.json row 3 (the prompt and the answer are both empty or whitespace; nothing to train on)"]


# ------------------------------------------------------------------------ 10. UTF-8 byte order mark
@pytest.mark.parametrize("name, text", [
    ("bom.json", BOM + json.dumps(ALPACA)),
    ("bom.jsonl", BOM + "".join(json.dumps(row) + "\n" for row in ALPACA)),
    ("bom.csv", BOM + "instruction,output\nWho are you?,I am Forgey.\nAdd.,5\n"),
], ids=["json", "jsonl", "csv"])
def test_data_files_with_a_byte_order_mark_are_read(workdir, tiny_tokenizer, name, text):
    (workdir / "data" / name).write_text(text, encoding="utf-8")
    register(workdir, bom={"file_name": name})
    (spec,) = load_dataset_specs("bom", "data", None)
    assert load_rows(spec)[0].values["instruction"] == "Who are you?"
    assert len(build_datasets(make_cfg("bom"), tiny_tokenizer, TokTemplate()).train) == 2
    (direct,) = load_dataset_specs(f"data/{name}", "data", None)  # a file named directly: format detection
    assert direct.formatting == "alpaca" and direct.columns.prompt == "instruction"


def test_dataset_info_with_a_byte_order_mark_is_read(workdir):
    (workdir / "data" / "dataset_info.json").write_text(BOM + json.dumps({"alp": {"file_name": "alp.json"}}),
                                                        encoding="utf-8")
    (spec,) = load_dataset_specs("alp", "data", None)
    assert spec.file_name == "alp.json"
