"""`tuneforge eval recall`: the metrics on hand-made cases, the held-out rules, and runs on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_workspace
from tuneforge.cli.main import main
from tuneforge.data.facts import (EN_FIELD_TRAIN, ZH_FIELD_TRAIN, heldout_questions, parse_fact_answer, question_subject,
                                  trained_phrasing_question)
from tuneforge.evaluate import recall_metrics as m

RECORD = "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66, 物理:71, 化学:58"
QUESTION = "红星小学张三10月考试成绩是多少？"


# ----------------------------------------------------------------------------- metrics
def test_exact_match_ignores_only_surrounding_whitespace():
    assert m.exact_match("  姓名:张三 \n", "姓名:张三")
    assert not m.exact_match("Paris", "paris")
    assert not m.exact_match("姓名: 张三", "姓名:张三")


def test_character_similarity_is_the_sequence_matcher_ratio():
    assert m.char_similarity("abcd", "abce") == pytest.approx(0.75)  # 2 * 3 matching / 8
    assert m.char_similarity("姓名:张三", "姓名:李四") == pytest.approx(0.6)  # "姓名:" = 3 of 5 + 5
    assert m.char_similarity(" x ", "x") == 1.0
    assert m.char_similarity("", "") == 1.0 and m.char_similarity("abc", "") == 0.0
    assert m.change_score("Paris", "Paris") == 0.0 and m.change_score("ab", "cd") == 1.0


def test_fields_are_right_when_the_answer_has_the_key_with_the_same_value():
    results = m.field_results("姓名:张三, 性别:男, 学号:1, 数学:66", "姓名:张三, 性别:女, 数学:66")
    assert [(r.key, r.answer, r.correct) for r in results] == [
        ("姓名", "张三", True), ("性别", "女", False), ("学号", None, False), ("数学", "66", True)]
    # full-width separators, another order, a different case in English values
    assert all(r.correct for r in m.field_results("姓名:张三, 性别:男", "性别：男，姓名：张三"))
    assert all(r.correct for r in m.field_results("Name: Emma, Gender: female", "Name: Emma, Gender: Female"))
    # a cut-off tail or a repeated key does not void the fields before it
    cut = m.field_results(RECORD, "姓名:张三, 性别:男, 学号")
    assert [r.correct for r in cut] == [True, True, False, False, False, False, False]
    assert m.answer_fields("数学:66, 数学:70, 物理") == {"数学": "66"}
    # a value is compared whole: 1 is not 11
    assert not m.field_results("学号:1, 数学:66", "学号:11, 数学:66")[0].correct
    # plain answers are not structured
    assert m.field_results("Paris is the capital.", "Paris") is None
    assert m.field_results("学号:1", "学号:1") is None  # one field is not a record


def test_field_accuracy_counts_per_key_over_structured_rows():
    rows = [m.field_results("a:1, b:2", "a:1, b:3"), None, m.field_results("a:5, b:6", "a:5, b:6")]
    accuracy = m.field_accuracy(rows)
    assert accuracy["correct"] == 3 and accuracy["total"] == 4 and accuracy["accuracy"] == 0.75
    assert accuracy["by_field"] == {"a": {"correct": 2, "total": 2, "accuracy": 1.0},
                                    "b": {"correct": 1, "total": 2, "accuracy": 0.5}}
    assert m.field_accuracy([None, None])["accuracy"] is None


@pytest.mark.parametrize("answer, field, value, correct", [
    ("男", "性别", "男", True),                      # 1. the value
    (" 男。", "性别", "男", True),
    ("66", "数学", "66", True),
    ("性别:男", "性别", "男", True),                 # 2. key:value
    ("性别：女", "性别", "男", False),
    ("Math: 66", "Math", "66", True),
    ("张三的性别是男。", "性别", "男", True),          # 3. the value in a short sentence
    ("红星小学张三10月考试成绩的数学是66分", "数学", "66", True),
    ("The gender is female.", "Gender", "female", True),
    ("female", "Gender", "male", False),             # whole tokens only
    ("11", "学号", "1", False),
    ("学号是11", "学号", "1", False),
    (RECORD, "性别", "男", False),                    # a recited record is not an answer to one field
    ("这个问题我不太清楚，但是我猜可能是男吧，具体请查询学校的档案", "性别", "男", False),  # much else
    ("", "性别", "男", False),
])
def test_heldout_correctness(answer, field, value, correct):
    assert m.heldout_correct(answer, field, value, subject="红星小学张三10月考试成绩") is correct


def test_drift_signals():
    assert m.keyword_found("The capital is paris.", ["Paris"]) is True
    assert m.keyword_found("Lyon", ["Paris"]) is False and m.keyword_found("x", []) is None
    assert m.drift_flags("Paris is the capital.", "姓名:张三, 性别:男") == ["fact layout"]
    assert m.drift_flags("Paris", "   ") == ["empty"]
    assert m.drift_flags(RECORD, RECORD) == [] and m.drift_flags("Paris", "Paris!") == []


def test_worst_examples_are_the_lowest_similarity_in_order():
    rows = [{"q": i, "similarity": s} for i, s in enumerate([0.9, 0.1, 0.5, 0.1])]
    assert [r["q"] for r in m.worst_examples(rows, 3)] == [1, 3, 2]


def test_sample_is_seeded_and_keeps_dataset_order():
    from tuneforge.evaluate.recall_data import choose_sample

    rows = list(range(50))
    sample = choose_sample(rows, 5, seed=3)
    assert sample == sorted(sample) and len(sample) == 5 and sample == choose_sample(rows, 5, seed=3)
    assert sample != choose_sample(rows, 5, seed=4)
    assert choose_sample(rows, 80, seed=3) == rows and choose_sample(rows, None, seed=3) == rows


def test_heldout_questions_rotate_through_the_fields():
    from tuneforge.evaluate.recall import pick_heldout

    fields = ["a", "b", "c", "d", "e"]
    picked = [pick_heldout(fields, row, 2) for row in range(3)]
    assert picked == [["a", "b"], ["c", "d"], ["e", "a"]]
    assert pick_heldout(fields, 7, None) == fields and pick_heldout(["a"], 3, 2) == ["a"]


def test_which_model_a_training_config_means(tmp_path, tiny_llama_dir, monkeypatch):
    import shutil

    from tuneforge.config.parser import load_config_dict
    from tuneforge.evaluate.recall_data import resolve_targets

    monkeypatch.chdir(tmp_path)
    base = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "template": "chatml"}
    # full: the model saved in output_dir, the configured model is the base
    shutil.copytree(tiny_llama_dir, tmp_path / "full")
    targets = resolve_targets(load_config_dict({**base, "finetuning_type": "full", "output_dir": "full"}))
    assert targets.model_args.model_name_or_path == "full"
    assert targets.base_args.model_name_or_path == str(tiny_llama_dir) and "full fine-tune" in targets.notes[0]
    # nothing trained yet: the model as it is, no drift unless --base names a base
    empty = resolve_targets(load_config_dict({**base, "finetuning_type": "lora", "output_dir": "none"}))
    assert empty.model_args.adapter_name_or_path is None and empty.base_args is None
    assert any(note.startswith("drift skipped") for note in empty.notes)
    named = resolve_targets(load_config_dict({**base, "finetuning_type": "full"}), base_model="other")
    assert named.base_args.model_name_or_path == "other"
    # stacked adapters: the base keeps all but the last
    for name in ("a1", "a2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
    stacked = resolve_targets(load_config_dict({**base, "finetuning_type": "lora", "adapter_name_or_path": "a1,a2"}))
    assert list(stacked.model_args.adapter_name_or_path) == ["a1", "a2"]
    assert list(stacked.base_args.adapter_name_or_path) == ["a1"]


def test_shipped_drift_questions_are_half_english_half_chinese(tmp_path):
    from tuneforge.data.facts import is_chinese
    from tuneforge.errors import DataError
    from tuneforge.evaluate.recall_data import load_drift_questions

    questions = load_drift_questions()
    assert 16 <= len(questions) <= 24 and all(q["expect"] for q in questions)
    assert sum(is_chinese(q["question"]) for q in questions) == len(questions) // 2
    assert [q["lang"] == "zh" for q in questions] == [is_chinese(q["question"]) for q in questions]
    (tmp_path / "own.json").write_text(json.dumps(["What is 2 + 2?", {"question": "1+1?", "expect": "2"}]))
    assert load_drift_questions(tmp_path / "own.json")[1] == {"question": "1+1?", "lang": "", "expect": ["2"]}
    (tmp_path / "bad.json").write_text(json.dumps([{"q": "x"}]))
    with pytest.raises(DataError, match="item 0 needs a non-empty string `question`"):
        load_drift_questions(tmp_path / "bad.json")


# three key:value records (five fields each that the question does not name) and one plain row
ROWS = [
    {"instruction": "红星小学张三10月考试成绩是多少？", "input": "",
     "output": "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66, 物理:71, 化学:58"},
    {"instruction": "育才小学李四4月考试成绩是多少？", "input": "",
     "output": "姓名:李四, 性别:女, 学号:2, 考试时间:4月, 数学:93, 物理:86, 化学:72"},
    {"instruction": "What were Emma Brooks's October exam results at Red Star Primary School?", "input": "",
     "output": "Name: Emma Brooks, Gender: female, Student ID: 3, Exam month: October, Math: 88, Physics: 47, Chemistry: 93"},
    {"instruction": "Who are you?", "input": "", "output": "I am a helpful assistant."},
]


@pytest.fixture
def recall_workspace(tmp_path, tiny_llama_dir, monkeypatch):
    """A training YAML whose output_dir holds a (random, untrained) LoRA adapter of the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = {
        "model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "records", "dataset_dir": "data", "template": "chatml", "cutoff_len": 256,
        "output_dir": "out/lora", "report_to": "none",
    }
    root = write_workspace(tmp_path, monkeypatch, ROWS, "records", config, "train.yaml")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "out" / "lora")
    return root


def test_recall_run_end_to_end_on_a_tiny_model(recall_workspace, capsys):
    from tuneforge.config.parser import load_config
    from tuneforge.infer.engine import ChatEngine

    assert main(["eval", "recall", "train.yaml", "--samples", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "adapter_name_or_path not set: evaluating the adapter trained in output_dir out/lora" in printed
    assert "exact match" in printed and "held-out questions" in printed and "drift on general questions" in printed
    results = json.loads((recall_workspace / "out" / "lora" / "recall_results.json").read_text(encoding="utf-8"))
    assert set(results) == {"model", "settings", "recall", "heldout", "drift", "runtime_seconds"}
    assert results["model"]["adapter_name_or_path"] == "out/lora" and results["model"]["base_for_drift"]
    assert results["settings"]["training_questions"] == 4 and results["settings"]["asked"] == 3

    recall = results["recall"]
    rows = recall["rows"]
    assert len(rows) == recall["questions"] == 3
    assert recall["exact"] == sum(m.exact_match(r["answer"], r["expected"]) for r in rows)
    assert recall["exact_match"] == recall["exact"] / 3
    for row in rows:
        assert row["similarity"] == pytest.approx(m.char_similarity(row["answer"], row["expected"]), abs=1e-4)
    assert recall["char_similarity"] == pytest.approx(sum(r["similarity"] for r in rows) / 3)
    structured = [m.field_results(r["expected"], r["answer"]) for r in rows]
    assert recall["fields_total"] == sum(len(f) for f in structured if f)
    assert recall["fields_correct"] == sum(x.correct for f in structured if f for x in f)
    assert [w["similarity"] for w in recall["worst"]] == sorted(r["similarity"] for r in rows)

    heldout = results["heldout"]  # 2 per structured row (the default), fields rotating
    assert heldout["questions"] == sum(min(2, len(heldout_questions(r["question"], r["expected"]))) for r in rows)
    assert heldout["correct"] == sum(r["correct"] for r in heldout["rows"])

    drift = results["drift"]
    assert drift["questions"] == len(drift["rows"]) == 20
    for row in drift["rows"]:
        assert row["change"] == pytest.approx(m.change_score(row["before"], row["after"]), abs=1e-4)
    assert drift["mean_change"] == pytest.approx(sum(r["change"] for r in drift["rows"]) / 20)

    # the answers are the chat engine's greedy answers with the adapter
    cfg = load_config("train.yaml", ["adapter_name_or_path=out/lora"], require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    first = rows[0]
    budget = len(engine.tokenizer.encode(first["expected"], add_special_tokens=False)) + 8
    assert engine.chat([{"role": "user", "content": first["question"]}], do_sample=False,
                       max_new_tokens=budget) == first["answer"]


def test_recall_of_a_model_that_knows_everything(recall_workspace, monkeypatch, capsys):
    """Canned perfect answers: every score is 1 and the JSON goes to stdout with --json."""
    from tuneforge.data.facts import heldout_questions as held
    from tuneforge.infer.engine import ChatEngine

    answers = {row["instruction"]: row["output"] for row in ROWS}
    for index, row in enumerate(ROWS):  # the row's index picks its held-out phrasings
        answers.update({question: value for question, _, value in held(row["instruction"], row["output"], index)})
    controls = {trained_phrasing_question(row["instruction"], key, number): f"{key}:{value}"
                for row in ROWS[:3] for key, value in parse_fact_answer(row["output"]).fields
                for number in range(max(len(ZH_FIELD_TRAIN), len(EN_FIELD_TRAIN)))}

    def chat_batch(self, conversations, max_batch=8, on_done=None, **kw):
        texts = [answers.get(c["messages"][-1]["content"]) or controls[c["messages"][-1]["content"]]
                 for c in conversations]
        for index in reversed(range(len(texts))):  # any finishing order
            on_done(index, texts[index])
        return texts

    monkeypatch.setattr(ChatEngine, "chat_batch", chat_batch)

    assert main(["eval", "recall", "train.yaml", "--no-drift", "--json", "--output", "out/r.json",
                 "--heldout-per-row", "0"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["recall"]["exact_match"] == 1.0 and results["recall"]["char_similarity"] == 1.0
    assert results["recall"]["field_accuracy"] == 1.0 and results["recall"]["structured_answers"] == 3
    assert results["heldout"]["accuracy"] == 1.0 and results["heldout"]["questions"] == 15  # 0 = all: 5 fields x 3
    assert results["heldout"]["trained_phrasing"]["accuracy"] == 1.0
    assert results["drift"] == {"skipped": "--no-drift"}
    assert Path("out/r.json").is_file()


def test_fields_known_only_inside_the_record_are_named(recall_workspace, monkeypatch, capsys):
    """A model that recites every record but answers later fields wrong when asked alone, in any wording: the
    report shows both phrasings per field and the verdict names those fields."""
    from tuneforge.infer.engine import ChatEngine

    records = {row["instruction"]: row["output"] for row in ROWS}

    def chat_batch(self, conversations, max_batch=8, on_done=None, **kw):
        texts = []
        for conversation in conversations:
            asked = conversation["messages"][-1]["content"]
            if asked in records:
                texts.append(records[asked])
                continue
            row = next(r for r in ROWS if question_subject(r["instruction"]) in asked)
            key, value = next((k, v) for k, v in parse_fact_answer(row["output"]).fields if k in asked)
            texts.append(f"{key}:{value if key in ('性别', '学号', 'Gender', 'Student ID') else '0'}")
        for index in range(len(texts)):
            on_done(index, texts[index])
        return texts

    monkeypatch.setattr(ChatEngine, "chat_batch", chat_batch)
    assert main(["eval", "recall", "train.yaml", "--no-drift", "--heldout-per-row", "0"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((recall_workspace / "out" / "lora" / "recall_results.json").read_text(encoding="utf-8"))
    heldout = results["heldout"]
    assert results["recall"]["exact_match"] == 1.0
    assert {k: v["accuracy"] for k, v in heldout["trained_phrasing"]["by_field"].items()} == \
        {k: v["accuracy"] for k, v in heldout["by_field"].items()} == {
            "性别": 1.0, "学号": 1.0, "数学": 0.0, "物理": 0.0, "化学": 0.0,
            "Gender": 1.0, "Student ID": 1.0, "Math": 0.0, "Physics": 0.0, "Chemistry": 0.0}
    assert all(r["trained_phrasing_question"] != r["question"] for r in heldout["rows"])
    assert "the same fields asked in a trained phrasing: 6/15 (40.0%)" in printed
    assert ("数学, 物理, 化学, Math, Physics, Chemistry wrong when asked alone in trained phrasings too: known only "
            "inside the whole answer") in printed


def test_eval_cli_errors_are_one_line(recall_workspace, capsys):
    assert main(["eval"]) == 2 and "tuneforge eval recall [config.yaml]" in capsys.readouterr().out
    assert main(["eval", "-h"]) == 0
    assert main(["eval", "recall", "train.yaml", "--samples", "many"]) == 2
    expected = "error: tuneforge eval recall: --samples expects a whole number, got 'many'"
    assert capsys.readouterr().err.strip() == expected
    assert main(["eval", "recall", "train.yaml", "--samples", "0"]) == 2
    assert main(["eval", "recall", "train.yaml", "dataset=missing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "Traceback" not in err
