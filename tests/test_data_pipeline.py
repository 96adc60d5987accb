"""build_datasets end to end: report, val_size, mixing, cache, stage checks, pt, preview."""

from __future__ import annotations

import importlib

import json
from pathlib import Path

import pytest

from conftest import data_run_config

from tuneforge.data import pipeline, stage_encode
from tuneforge.data.pipeline import build_datasets
from tuneforge.data.preview import format_preview, mark_sample
from tuneforge.data.report import DataReport
from tuneforge.errors import ConfigError, DataError

X = -100


class TokTemplate:
    """prompt ids = tokens of "Q:<user>\\n", response ids = tokens of the answer + eos."""

    name = "tok"
    efficient_eos = False
    default_system = ""
    stop_words = ()

    def encode_multiturn(self, tokenizer, messages, system=None, tools=None):
        enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return [(enc(f"Q:{messages[i].content}\n"), enc(messages[i + 1].content) + [tokenizer.eos_token_id])
                for i in range(0, len(messages), 2)]


ALPACA = [
    {"instruction": "Hello", "input": "", "output": "I am an AI assistant."},
    {"instruction": "The quick brown fox jumps over the lazy dog. " * 4, "output": "fox"},  # truncated
    {"instruction": "Bad", "output": 5},  # invalid
    {"instruction": "Alice", "input": "math", "output": "91 points"},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "who"}, {"from": "gpt", "value": "me"}]},
    {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},  # invalid
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "alp.json").write_text(json.dumps(ALPACA))
    (data / "sg.jsonl").write_text("\n".join(json.dumps(r) for r in SHAREGPT) + "\n")
    (data / "nums.jsonl").write_text("".join(json.dumps({"instruction": f"n{i}", "output": f"v{i}"}) + "\n"
                                             for i in range(8)))
    (data / "pairs.json").write_text(json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b"}]))
    (data / "docs.txt").write_text("Hello, who are you?\nThe quick brown fox.\n")
    info = {
        "alp": {"file_name": "alp.json"},
        "sg": {"file_name": "sg.jsonl", "formatting": "sharegpt"},
        "nums": {"file_name": "nums.jsonl"},
        "pairs": {"file_name": "pairs.json", "ranking": True, "columns": {"chosen": "chosen", "rejected": "rejected"}},
        "docs": {"file_name": "docs.txt", "columns": {"prompt": "text"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    return tmp_path


def make_cfg(dataset, seed=42, **data):
    return data_run_config(dataset, seed=seed, **{"cutoff_len": 24, **data})


def first_user(tokenizer, sample):
    """The user text of a TokTemplate sample (between "Q:" and the newline)."""
    text = tokenizer.decode([t for t, l in zip(sample["input_ids"], sample["labels"]) if l == X])
    return text[2:].split("\n")[0]


def test_report_counts_and_source_refs(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("alp,sg"), tiny_tokenizer, TokTemplate())
    assert len(bundle.train) == 4 and bundle.eval is None
    alp, sg = bundle.report.stats("alp"), bundle.report.stats("sg")
    assert (alp.rows_read, alp.rows_used, alp.kept, alp.truncated, dict(alp.dropped)) == (
        4, 4, 3, 1, {"invalid alpaca row": 1})
    assert alp.refs["invalid alpaca row"] == ["data/alp.json row 3 (column 'output' must be a string, found int 5)"]
    assert alp.refs["truncated"][0].startswith("data/alp.json row 2 (")
    assert (sg.rows_read, sg.kept, dict(sg.dropped)) == (2, 1, {"invalid sharegpt row": 1})
    assert sg.refs["invalid sharegpt row"][0].startswith("data/sg.jsonl line 2 (message 1 has role 'user'")
    assert all(len(s) <= 24 for s in bundle.train["input_ids"])
    first = bundle.train[0]
    expected_prompt = tiny_tokenizer("Q:Hello\n", add_special_tokens=False)["input_ids"]
    assert first["labels"] == [X] * len(expected_prompt) + first["input_ids"][len(expected_prompt):]
    assert alp.trained_tokens == sum(sum(1 for l in s if l != X) for s in bundle.train["labels"][:3])

    text = bundle.report.format()
    assert text.splitlines()[0] == "data: 4 train sample(s), 0 eval sample(s)"
    assert "  [train] alp: read 4, kept 3, dropped 1, truncated 1; " in text
    assert ("      dropped 1: invalid alpaca row (e.g. data/alp.json row 3 (column 'output' must be a string, "
            "found int 5))") in text
    saved = json.loads(bundle.report.save(workdir / "out").read_text())
    assert saved == bundle.report.to_json()
    assert DataReport.from_json(saved).to_json() == saved


def test_all_rows_dropped_explains_why(workdir, tiny_tokenizer):
    (workdir / "data" / "bad.json").write_text(json.dumps([{"instruction": "q", "output": 1}] * 3))
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    info["bad"] = {"file_name": "bad.json"}
    (workdir / "data" / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg("bad"), tiny_tokenizer, TokTemplate())
    assert str(err.value) == (
        "no train samples left: all 3 row(s) of bad were dropped. Top reasons: invalid alpaca row: 3 row(s), e.g. "
        "data/bad.json row 1 (column 'output' must be a string, found int 1), data/bad.json row 2 (column 'output' "
        "must be a string, found int 1), data/bad.json row 3 (column 'output' must be a string, found int 1)")


def test_template_errors_are_reported_per_row(workdir, tiny_tokenizer):
    class Picky(TokTemplate):
        def encode_multiturn(self, tokenizer, messages, system=None, tools=None):
            if messages[0].content == "Alice\nmath":
                raise DataError("no slot for math")
            return super().encode_multiturn(tokenizer, messages, system, tools)

    bundle = build_datasets(make_cfg("alp"), tiny_tokenizer, Picky())
    alp = bundle.report.stats("alp")
    assert alp.kept == 2
    assert alp.refs["the template cannot encode this row"] == ["data/alp.json row 4 (no slot for math)"]


def test_truncation_drop_is_reported(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("alp", truncation="drop"), tiny_tokenizer, TokTemplate())
    alp = bundle.report.stats("alp")
    assert (alp.kept, alp.truncated, dict(alp.dropped)) == (
        2, 0, {"invalid alpaca row": 1, "longer than cutoff_len (24)": 1})
    assert alp.refs["longer than cutoff_len (24)"][0].startswith("data/alp.json row 2 (")


def test_val_size_fraction_and_count(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("nums", val_size=0.25), tiny_tokenizer, TokTemplate())
    assert (len(bundle.train), len(bundle.eval)) == (6, 2)
    assert (bundle.report.train_samples, bundle.report.eval_samples) == (6, 2)
    again = build_datasets(make_cfg("nums", val_size=0.25), tiny_tokenizer, TokTemplate())
    assert again.eval["input_ids"] == bundle.eval["input_ids"]  # seeded
    users = {first_user(tiny_tokenizer, s) for s in bundle.train} | {first_user(tiny_tokenizer, s) for s in bundle.eval}
    assert users == {f"n{i}" for i in range(8)}
    bundle = build_datasets(make_cfg("nums", val_size=3), tiny_tokenizer, TokTemplate())
    assert (len(bundle.train), len(bundle.eval)) == (5, 3)
    with pytest.raises(ConfigError, match="either `val_size` or `eval_dataset`"):
        build_datasets(make_cfg("nums", val_size=0.1, eval_dataset="alp"), tiny_tokenizer, TokTemplate())


def test_eval_dataset_and_max_samples(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("nums", eval_dataset="sg", max_samples=5), tiny_tokenizer, TokTemplate())
    assert [first_user(tiny_tokenizer, s) for s in bundle.train] == ["n0", "n1", "n2", "n3", "n4"]
    assert [first_user(tiny_tokenizer, s) for s in bundle.eval] == ["who"]
    assert bundle.report.stats("sg", "eval").rows_read == 2
    assert bundle.report.stats("nums").rows_used == 5


def test_mix_strategies(workdir, tiny_tokenizer):
    def users(strategy, **kw):
        bundle = build_datasets(make_cfg("nums,sg", mix_strategy=strategy, max_samples=3, **kw),
                                tiny_tokenizer, TokTemplate())
        return [first_user(tiny_tokenizer, s) for s in bundle.train]

    assert users("concat") == ["n0", "n1", "n2", "who"]
    assert users("interleave_under") == ["n0", "who"]
    assert users("interleave_over") == ["n0", "who", "n1", "who", "n2", "who"]
    probs = users("interleave_over", interleave_probs="0.5,0.5")
    assert sorted(set(probs)) == ["n0", "n1", "n2", "who"]
    with pytest.raises(ConfigError, match="interleave_probs has 1 value"):
        users("interleave_under", interleave_probs=[1.0])
    assert users("interleave_once") == ["n0", "who", "n1", "n2"]  # every row once; sg's is used up first
    assert sorted(users("interleave_once", interleave_probs="0.2,0.8")) == ["n0", "n1", "n2", "who"]


@pytest.mark.parametrize("probs", [None, (0.4, 0.3, 0.3), (0.8, 0.1, 0.1), (0.1, 0.8, 0.1)])
def test_interleave_once_uses_every_row_exactly_once(probs):
    """LF's `interleave_once` = HF's stopping_strategy all_exhausted_without_replacement: no row repeated,
    none left out, whatever the probabilities (`interleave_over` repeats the shorter dataset's rows)."""
    from collections import Counter

    from tuneforge.config.args import DataArguments
    from tuneforge.data.rows import mix

    lists = [[f"a{i}" for i in range(3)], [f"b{i}" for i in range(7)], [f"c{i}" for i in range(2)]]
    once = mix(lists, ["a", "b", "c"], DataArguments(mix_strategy="interleave_once", interleave_probs=probs), 7)
    assert Counter(row for _, row in once) == Counter(row for rows in lists for row in rows)
    assert all(row.startswith(name) for name, row in once)
    for rows in lists:  # each dataset's rows keep their order
        assert [row for _, row in once if row in rows] == rows
    over = mix(lists, ["a", "b", "c"], DataArguments(mix_strategy="interleave_over", interleave_probs=probs), 7)
    assert max(Counter(row for _, row in over).values()) > 1


def test_num_samples_oversamples(workdir, tiny_tokenizer):
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    info["sg"]["num_samples"] = 5
    (workdir / "data" / "dataset_info.json").write_text(json.dumps(info))
    bundle = build_datasets(make_cfg("sg"), tiny_tokenizer, TokTemplate())
    sg = bundle.report.stats("sg")
    assert (sg.rows_read, sg.rows_used) == (2, 5)
    assert sg.kept + sg.dropped["invalid sharegpt row"] == 5 and sg.kept >= 1 and sg.dropped["invalid sharegpt row"] >= 1
    assert len(bundle.train) == sg.kept


def test_cache_hit_skips_encoding(workdir, tiny_tokenizer, monkeypatch):
    calls = []
    real = stage_encode.encoding.sft_pieces

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stage_encode.encoding, "sft_pieces", counting)  # once per row encoded
    first = build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    assert len(calls) == 3
    second = build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    assert len(calls) == 3  # nothing encoded again
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.report.stats("alp").to_dict() == first.report.stats("alp").to_dict()
    assert second.report.notes[0].startswith("train: tokenized data loaded from cache ")
    build_datasets(make_cfg("alp", overwrite_cache=True), tiny_tokenizer, TokTemplate())
    assert len(calls) == 6
    build_datasets(make_cfg("alp", cutoff_len=32), tiny_tokenizer, TokTemplate())
    assert len(calls) == 9  # another cutoff_len is another cache entry
    (workdir / "data" / "alp.json").write_text(json.dumps(ALPACA[:1]))
    build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    assert len(calls) == 10  # changed file content


def test_cache_entries_are_memory_mapped_arrow_files_and_broken_ones_rebuilt(workdir, tiny_tokenizer):
    first = build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    (entry,) = [p for p in (workdir / "cache" / "datasets").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in (entry / "data").iterdir()) == ["shard-00000.arrow"]
    assert [Path(f["filename"]) for f in first.train.cache_files] == [entry / "data" / "shard-00000.arrow"]
    (entry / "report.json").unlink()  # a broken entry: encoded again, not an error
    again = build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    assert again.train["input_ids"] == first.train["input_ids"]
    assert (entry / "report.json").is_file() and not any("loaded from cache" in n for n in again.report.notes)


def test_an_unwritable_cache_folder_still_gives_the_data(workdir, tiny_tokenizer, monkeypatch):
    """Caching is an optimisation: when the cache folder cannot be made, the split lives in a temporary folder."""
    (workdir / "blocked").write_text("a file, not a folder")
    monkeypatch.setenv("TUNEFORGE_CACHE", str(workdir / "blocked"))
    bundle = build_datasets(make_cfg("alp", val_size=0.34), tiny_tokenizer, TokTemplate())
    assert len(bundle.train) + len(bundle.eval) == 3
    assert all(not f["filename"].startswith(str(workdir)) for f in bundle.train.cache_files)


def test_stage_checks(workdir, tiny_tokenizer):
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg("pairs"), tiny_tokenizer, TokTemplate(), stage="sft")
    assert str(err.value).startswith(
        f"dataset 'pairs' in {workdir / 'data' / 'dataset_info.json'} is a ranking dataset (ranking: true, "
        "chosen/rejected answers), but stage 'sft' needs plain samples.")
    with pytest.raises(DataError, match="dataset 'alp' in .* is not a ranking dataset, but stage 'dpo' needs"):
        build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate(), stage="dpo")
    with pytest.raises(ConfigError, match="unknown stage `xyz`; expected one of: sft, pt, rm, dpo, kto, ppo"):
        build_datasets(make_cfg("pairs"), tiny_tokenizer, TokTemplate(), stage="xyz")
    with pytest.raises(ConfigError, match="`dataset` is not set"):
        build_datasets(make_cfg(None), tiny_tokenizer, TokTemplate())


def test_pt_stage_blocks(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("docs", cutoff_len=8), tiny_tokenizer, None, stage="pt")
    stream = []
    for text in ["Hello, who are you?", "The quick brown fox."]:
        stream += tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert sum(bundle.train["input_ids"], []) == stream
    assert bundle.train["labels"] == bundle.train["input_ids"]
    docs = bundle.report.stats("docs")
    assert (docs.rows_read, docs.kept, docs.tokens) == (2, 2, len(stream))


def test_direct_file_dataset(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("data/nums.jsonl"), tiny_tokenizer, TokTemplate())
    assert len(bundle.train) == 8
    assert bundle.report.stats("data/nums.jsonl").kept == 8


def test_preview_marks_trained_text(workdir, tiny_tokenizer):
    bundle = build_datasets(make_cfg("alp"), tiny_tokenizer, TokTemplate())
    text = format_preview(bundle, tiny_tokenizer, n=1, color=False)
    first = bundle.train[0]
    lines = text.splitlines()
    assert lines[0] == "first training samples (trained text inside [[...]]):"
    assert lines[1] == f"--- sample 0: {len(first['input_ids'])} tokens, {sum(l != X for l in first['labels'])} trained"
    assert lines[2] == "Q:Hello"
    assert lines[3] == "[[I am an AI assistant.<|im_end|>]]"
    assert lines[4] == "---" and lines[5] == bundle.report.format().splitlines()[0]
    coloured = mark_sample(first["input_ids"], first["labels"], tiny_tokenizer, color=True)
    assert coloured == "Q:Hello\n\033[32mI am an AI assistant.<|im_end|>\033[0m"


def test_real_chatml_template_end_to_end(workdir, tiny_tokenizer):
    templates = importlib.import_module("tuneforge.data.templates")
    template = templates.get_template("chatml", tiny_tokenizer)
    bundle = build_datasets(make_cfg("sg", cutoff_len=64), tiny_tokenizer, template)
    assert format_preview(bundle, tiny_tokenizer, n=1, color=False).splitlines()[2:4] == [
        "<|im_start|>user", "who<|im_end|>"]
    assert "[[me<|im_end|>" in format_preview(bundle, tiny_tokenizer, n=1, color=False)


# ----------------------------------------------------------------------------- tokenized_path, eval_on_each_dataset
def test_tokenized_path_saves_then_loads_without_reading_data(workdir, tiny_tokenizer, monkeypatch):
    import shutil

    from tuneforge.data import rows

    cfg = make_cfg("alp", eval_dataset="nums", tokenized_path="saves/tokenized")
    first = build_datasets(cfg, tiny_tokenizer, TokTemplate())
    saved = workdir / "saves" / "tokenized"
    assert sorted(p.name for p in saved.iterdir()) == ["dataset_dict.json", "train", "tuneforge_data.json", "validation"]
    info = json.loads((saved / "tuneforge_data.json").read_text())
    assert (info["stage"], info["report"]["train_samples"], info["report"]["eval_samples"]) == ("sft", 3, 8)
    assert any("saved to tokenized_path" in note for note in first.report.notes)

    # the data files and the content cache are gone, and reading any data fails: the saved encoding is used
    (workdir / "data" / "alp.json").unlink()
    (workdir / "data" / "nums.jsonl").unlink()
    shutil.rmtree(workdir / "cache")
    monkeypatch.setattr(rows, "load_rows", lambda *a, **k: pytest.fail("data was read"))
    second = build_datasets(cfg, tiny_tokenizer, TokTemplate())
    assert second.train.to_list() == first.train.to_list() and len(second.train) == 3
    assert second.eval.to_list() == first.eval.to_list() and len(second.eval) == 8
    assert second.eval_sets is None
    assert second.report.stats("alp").dropped == first.report.stats("alp").dropped  # the encoding's report
    assert any("loaded from tokenized_path" in note for note in second.report.notes)
    assert "3 train / 8 eval sample(s)" in pipeline.tokenized_summary("saves/tokenized", "sft")  # --dry-run's line
    assert pipeline.tokenized_summary("saves/elsewhere", "sft") is None
    with pytest.raises(ConfigError, match="encoded for stage sft"):
        build_datasets(cfg, tiny_tokenizer, TokTemplate(), stage="pt")


def test_tokenized_path_refuses_a_folder_of_something_else(workdir, tiny_tokenizer):
    (workdir / "other").mkdir()
    (workdir / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no tuneforge tokenized data"):
        build_datasets(make_cfg("alp", tokenized_path="other"), tiny_tokenizer, TokTemplate())
    (workdir / "empty").mkdir()  # an empty folder is filled, as in LF
    build_datasets(make_cfg("alp", tokenized_path="empty"), tiny_tokenizer, TokTemplate())
    assert (workdir / "empty" / "tuneforge_data.json").is_file()


def test_eval_on_each_dataset_keeps_the_eval_datasets_apart(workdir, tiny_tokenizer):
    cfg = make_cfg("alp", eval_dataset="nums,sg", eval_on_each_dataset=True, tokenized_path="tok")
    bundle = build_datasets(cfg, tiny_tokenizer, TokTemplate())
    assert list(bundle.eval_sets) == ["nums", "sg"] and bundle.trainer_eval is bundle.eval_sets
    assert [first_user(tiny_tokenizer, s) for s in bundle.eval_sets["nums"]] == [f"n{i}" for i in range(8)]
    assert [first_user(tiny_tokenizer, s) for s in bundle.eval_sets["sg"]] == ["who"]
    assert len(bundle.eval) == bundle.report.eval_samples == 9
    loaded = build_datasets(cfg, tiny_tokenizer, TokTemplate())  # from tokenized_path: validation_<name> splits
    assert {name: split.to_list() for name, split in loaded.eval_sets.items()} == \
        {name: split.to_list() for name, split in bundle.eval_sets.items()}
    merged = build_datasets(make_cfg("alp", eval_dataset="nums,sg"), tiny_tokenizer, TokTemplate())
    assert merged.eval_sets is None and merged.trainer_eval is merged.eval and len(merged.eval) == 9


def test_eval_on_each_dataset_reports_one_loss_per_dataset(workdir, tiny_tokenizer, tiny_llama_dir):
    """Two eval datasets -> eval_nums_loss and eval_sg_loss (HF Trainer's dict of eval datasets), each the loss of
    that dataset alone; in trainer_log.jsonl too."""
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collate import PackedCollator
    from tuneforge.train.workflow import build_trainer

    cfg = make_cfg("alp", eval_dataset="nums,sg", eval_on_each_dataset=True)
    bundle = build_datasets(cfg, tiny_tokenizer, TokTemplate())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    trainer, _ = build_trainer(cfg, model, tiny_tokenizer, bundle, PackedCollator())
    metrics = trainer.evaluate()
    assert {"eval_nums_loss", "eval_sg_loss"} <= metrics.keys() and "eval_loss" not in metrics
    assert metrics["eval_nums_loss"] == pytest.approx(trainer.evaluate(bundle.eval_sets["nums"])["eval_loss"])
    assert metrics["eval_sg_loss"] == pytest.approx(trainer.evaluate(bundle.eval_sets["sg"])["eval_loss"])
    assert metrics["eval_nums_loss"] != pytest.approx(metrics["eval_sg_loss"])
    logged = [json.loads(line) for line in (workdir / "unused" / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_nums_loss" in row for row in logged) and any("eval_sg_loss" in row for row in logged)


def test_stage_metrics_of_one_eval_dataset_carry_its_name():
    from tuneforge.train.trainer import _eval_prefix

    assert _eval_prefix({"eval_loss": 1.0, "epoch": 1}) == "eval_"
    assert _eval_prefix({"eval_nums_runtime": 0.1, "eval_nums_loss": 1.0}) == "eval_nums_"  # rewards/... of dpo


@pytest.mark.parametrize("shared, local", [(False, True), (True, False)])
def test_data_shared_file_system_makes_the_first_process_of_all_encode_first(workdir, tiny_tokenizer, monkeypatch,
                                                                                shared, local):
    """LF: each node's first process encodes first, or with `data_shared_file_system` only the global first one (the
    other nodes then read its cache from the shared file system)."""
    import contextlib

    cfg = make_cfg("alp", data_shared_file_system=shared)
    calls = []

    @contextlib.contextmanager
    def main_process_first(local=True, desc=""):
        calls.append(local)
        yield

    monkeypatch.setattr(cfg.training, "main_process_first", main_process_first)
    build_datasets(cfg, tiny_tokenizer, TokTemplate())
    assert calls == [local]
