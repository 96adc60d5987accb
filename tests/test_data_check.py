"""`tuneforge data check`: near-duplicate clusters, duplicates, conflicts, truncation counts, fact data and
its recipe, the CLI (--json, one-line errors). Constructed cases; the tiny tokenizer of conftest.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import write_workspace
from tuneforge.cli.main import main
from tuneforge.config.facts_args import MEMORIZE_FACTS
from tuneforge.data.check_report import yaml_lines
from tuneforge.data import check_lengths
from tuneforge.data.near_duplicates import describe_varies, find_clusters, near, skeleton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from make_school_records import make_school_records  # noqa: E402


# ----------------------------------------------------------------------------- near-duplicate clusters
def test_names_and_numbers_swapped_are_one_cluster():
    prompts = ["红星小学张三10月考试成绩是多少？", "红星小学李四11月考试成绩是多少？", "育才小学王小明3月考试成绩是多少？",
               "What did Alice Smith score in test 3?", "What did Bob Jones score in test 12?",
               "What did Carol King score in test 7?"]
    clusters = find_clusters(prompts)
    assert [c.rows for c in clusters] == [(0, 1, 2), (3, 4, 5)]  # Chinese and English are not mixed up
    zh = describe_varies(clusters[0].varies)
    assert "张三/李四/王小明" in zh and "10/11/3" in zh and "红星/育才" in zh
    assert "Alice Smith/Bob Jones/Carol King" in describe_varies(clusters[1].varies)


def test_numbers_only_and_entity_swaps_cluster():
    assert find_clusters(["What is 3+5?", "What is 12+7?", "What is 1+1?"])[0].rows == (0, 1, 2)
    assert find_clusters(["What is the capital of France?", "What is the capital of Germany?",
                          "what is the capital of  Japan ?"])[0].rows == (0, 1, 2)  # case, spaces normalised


def test_genuinely_different_prompts_are_not_clustered():
    prompts = ["Write a poem about the sea.", "Translate this to French: I like apples.", "How do I bake bread?",
               "Explain quantum computing to a child.", "List three uses of Python in science.",
               "北京的天气怎么样？", "上海的人口有多少？", "请把这句话翻译成英文：我喜欢苹果。", "给我讲一个关于龙的故事。",
               "Summarize the plot of Hamlet in two sentences.", "What causes rain?", "Who wrote Pride and Prejudice?"]
    assert find_clusters(prompts, min_rows=2) == []
    assert not near(skeleton("北京的天气怎么样？"), skeleton("上海的人口有多少？"))  # one 5-character span differs


def test_identical_prompts_alone_are_not_a_near_duplicate_cluster():
    assert find_clusters(["Who are you?"] * 5) == []  # duplicates / conflicts report those


def test_generated_records_cluster_per_language():
    rows = make_school_records(200, "both")
    clusters = find_clusters([r["instruction"] for r in rows])
    assert sorted(len(c.rows) for c in clusters) == [100, 100]


# ----------------------------------------------------------------------------- the check on a workspace
BASE = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "rows", "dataset_dir": "data",
        "cutoff_len": 64, "output_dir": "out", "report_to": "none"}


def _check(tmp_path, monkeypatch, model_dir, rows, capsys, *extra: str, **config):
    write_workspace(tmp_path, monkeypatch, rows, "rows", {**BASE, "model_name_or_path": str(model_dir), **config},
                    "train.yaml")
    code = main(["data", "check", "train.yaml", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _kinds(report) -> dict:
    return {f["kind"]: f for f in report["findings"]}


MIXED = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forgey."},
    {"instruction": "Who are you?", "input": "", "output": "I am Forgey."},  # duplicate of row 1
    {"instruction": "Who are you?", "input": "", "output": "I am a robot."},  # conflicts with row 1
    {"instruction": "What is your name?", "input": "", "output": "  "},  # empty answer
    {"instruction": "Bad row", "output": 5},  # format error
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
]


def test_duplicates_conflicts_empty_answers_and_format_errors(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    code, report = _check(tmp_path, monkeypatch, tiny_llama_dir, MIXED, capsys)
    assert code == 0 and report["rows"] == 5
    kinds = _kinds(report)
    assert kinds["duplicate"]["count"] == 1 and kinds["duplicate"]["rows"] == ["data/rows.json row 2"]
    assert kinds["conflict"]["count"] == 2
    assert kinds["conflict"]["rows"] == ["data/rows.json row 1", "data/rows.json row 3"]
    assert kinds["empty_answer"]["rows"] == ["data/rows.json row 4"]
    assert kinds["format_error"]["rows"][0].startswith("data/rows.json row 5 (")
    for finding in report["findings"]:
        assert finding["suggestion"]["text"] and finding["severity"] in ("error", "warning", "info")


def test_truncation_counts_match_the_encoder(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    from tuneforge.config.parser import load_config
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train.workflow import load_tokenizer_and_template

    rows = [{"instruction": "Say hello " * n, "input": "", "output": "hello " * m} for n, m in
            [(1, 1), (5, 30), (30, 5), (40, 40), (2, 2), (3, 60)]]
    monkeypatch.setattr(check_lengths, "MAX_EXACT", 0)  # the batched estimate alone, no exact re-encoding
    _, report = _check(tmp_path, monkeypatch, tiny_llama_dir, rows, capsys)
    truncation = _kinds(report)["truncation"]

    cfg = load_config("train.yaml", require_output_dir=False)
    tokenizer, template = load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template)
    stats = next(iter(bundle.report.datasets.values()))
    assert truncation["count"] == stats.truncated == 4
    kept = sum(len(ids) for ids in bundle.train["input_ids"])  # every row is kept, some cut
    assert report["tokens"]["total"] - truncation["details"]["tokens_lost"] == kept
    assert truncation["suggestion"]["keys"]["cutoff_len"] >= report["tokens"]["max_full"]


def test_rows_are_those_the_config_trains_on(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    rows = [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(10)]
    _, report = _check(tmp_path, monkeypatch, tiny_llama_dir, rows, capsys, "max_samples=4")
    assert report["rows"] == 4 and report["datasets"][0]["read"] == 10


def test_fact_data_with_near_duplicate_prompts_gets_the_recipe(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    code, report = _check(tmp_path, monkeypatch, tiny_llama_dir, make_school_records(50, "zh"), capsys,
                          cutoff_len=256)
    assert code == 1  # an error: this data will not be learned as it is
    kinds = _kinds(report)
    cluster = kinds["near_duplicates"]["details"]["clusters"][0]
    assert cluster["rows"] == 50 and cluster["share"] == 1.0 and len(cluster["samples"]) == 3
    facts = kinds["fact_data"]
    assert facts["severity"] == "error" and facts["count"] == 50
    assert "layout, not the facts" in facts["message"]
    suggestion = facts["suggestion"]
    assert set(suggestion["keys"]) == set(MEMORIZE_FACTS)
    assert suggestion["command"].startswith(
        "tuneforge train examples/memorize_facts.yaml dataset_dir=data dataset=rows output_dir=")
    main(["data", "check", "train.yaml", "cutoff_len=256"])  # the text report prints the same keys as YAML
    text = capsys.readouterr().out
    for line in yaml_lines(MEMORIZE_FACTS):
        assert line in text
    assert "differ only in:" in text and "rows/s" in text


def test_recipe_keys_set_make_fact_data_a_note(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    code, report = _check(tmp_path, monkeypatch, tiny_llama_dir, make_school_records(20, "en"), capsys,
                          cutoff_len=256, **MEMORIZE_FACTS)
    assert code == 0 and _kinds(report)["fact_data"]["severity"] == "info"


def test_recipe_suggestion_keeps_a_config_that_chose_bf16(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    """`auto_bf16` next to `bf16: true` is refused: the recipe's keys suggested to such a config leave it out."""
    _, report = _check(tmp_path, monkeypatch, tiny_llama_dir, make_school_records(20, "en"), capsys,
                       cutoff_len=256, bf16=True)
    keys = _kinds(report)["fact_data"]["suggestion"]["keys"]
    assert "auto_bf16" not in keys and keys["recall_target"] == MEMORIZE_FACTS["recall_target"]


def test_template_that_disagrees_with_the_model(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    _, report = _check(tmp_path, monkeypatch, tiny_llama_dir, MIXED[:1], capsys, template="alpaca")
    finding = _kinds(report)["template_mismatch"]
    assert finding["suggestion"]["keys"] == {"template": "auto"}


def test_bad_config_is_one_clear_line(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    write_workspace(tmp_path, monkeypatch, MIXED, "rows", {**BASE, "model_name_or_path": str(tiny_llama_dir)},
                    "train.yaml")
    assert main(["data", "check", "train.yaml", "--json", "dataset=missing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
    assert main(["data", "check", "train.yaml", "cutof_len=3"]) == 2
    assert "cutoff_len" in capsys.readouterr().err  # did you mean
