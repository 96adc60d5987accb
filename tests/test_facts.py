"""data/facts.py: parsing `key:value` answers, question-side augmentation that never changes a fact,
held-out phrasings that training never sees."""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import pytest

from tuneforge.data import facts
from tuneforge.data.facts import (FactAnswer, augment_fact_row, contains_value, heldout_questions, parse_fact_answer,
                                  question_subject)

ROOT = Path(__file__).resolve().parent.parent


def _records(lang: str, rows: int = 40) -> list[dict]:
    spec = importlib.util.spec_from_file_location("make_school_records", ROOT / "data" / "make_school_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_school_records(rows, lang)


def test_parse_and_render_keep_the_layout():
    zh = parse_fact_answer("姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66")
    assert zh == FactAnswer((("姓名", "张三"), ("性别", "男"), ("学号", "1"), ("考试时间", "10月"), ("数学", "66")), ", ", ":")
    assert zh.render() == "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66"
    en = parse_fact_answer("Name: Emma Brooks; Student ID: 7")
    assert en.render() == "Name: Emma Brooks; Student ID: 7" and en.kv_sep == ": "
    assert parse_fact_answer("姓名：李四，学号：3").render([("学号", "3")]) == "学号：3"
    for text in ("The capital of France is Paris.", "a: 1", "x: 1, x: 2", "", "1, 2, 3"):
        assert parse_fact_answer(text) is None, text


def test_subject_and_whole_values():
    assert question_subject("红星小学张三10月考试成绩是多少？") == "红星小学张三10月考试成绩"
    assert question_subject("张三的学号是什么?") == "张三的学号"
    assert question_subject("What were Emma's October results?") == "What were Emma's October results"
    assert contains_value("光明小学郭强11月考试成绩", "11月") and not contains_value("光明小学郭强11月考试成绩", "1")
    assert contains_value("Emma Brooks, 7", "7") and not contains_value("Room 17", "7")


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_augmentation_keeps_every_name_and_number(lang):
    rng = random.Random(0)
    for row in _records(lang):
        question, answer = row["instruction"], row["output"]
        original = parse_fact_answer(answer)
        given = re.findall(r"\d+|[A-Z][a-z]+", question)  # numbers and capitalised words of the question
        extra = augment_fact_row(question, answer, rng)
        hidden = [k for k, v in original.fields if not contains_value(question, v)]
        assert len(extra) == facts.FACT_PARAPHRASES + len(hidden) + facts.ORDERED_QUESTIONS
        for new_question, new_answer in extra:
            assert question_subject(question) in new_question  # the question's names, school, month verbatim
            assert all(token in new_question for token in given)
            # the whole answer or some of its fields (`key:value`): each exactly as in the original
            parsed = parse_fact_answer(new_answer, min_fields=1)
            assert parsed is not None and set(parsed.fields) <= set(original.fields), new_answer
            assert parsed.kv_sep == original.kv_sep and (len(parsed.fields) == 1 or parsed.pair_sep == original.pair_sep)


def test_one_question_per_hidden_field_and_whole_records_in_stated_orders():
    question, answer = "红星小学张三10月考试成绩是多少？", "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66, 物理:71, 化学:58"
    original = parse_fact_answer(answer).fields
    extra = augment_fact_row(question, answer, random.Random(3), paraphrases=0, ordered_questions=3, field_questions=None)
    one_field = [a for _, a in extra if "," not in a]
    assert sorted(one_field) == sorted(["性别:男", "学号:1", "数学:66", "物理:71", "化学:58"])  # 张三, 10月: given
    ordered = [(q, parse_fact_answer(a).fields) for q, a in extra if "," in a]
    assert len(ordered) == 3 and len({fields for _, fields in ordered}) == 3
    for asked, fields in ordered:
        assert sorted(fields) == sorted(original) and fields != original  # the whole record, another order
        assert "、".join(k for k, _ in fields) in asked  # the question states the order


def test_chain_questions_ask_the_hidden_fields_after_the_first():
    """augment_chain_questions: 学号, 数学, 物理 and 化学 (every hidden field after the first, 性别) get n more
    questions, in other trained phrasings; 性别 follows only the name, which the question holds."""
    question, answer = "红星小学张三10月考试成绩是多少？", "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66, 物理:71, 化学:58"
    plain = augment_fact_row(question, answer, random.Random(3), paraphrases=0, ordered_questions=0)
    extra = augment_fact_row(question, answer, random.Random(3), paraphrases=0, ordered_questions=0, chain_questions=2)
    count = lambda pairs: sorted(a for _, a in pairs)  # noqa: E731
    assert count(plain) == sorted(["性别:男", "学号:1", "数学:66", "物理:71", "化学:58"])
    assert count(extra) == sorted(count(plain) + ["学号:1", "数学:66", "物理:71", "化学:58"] * 2)
    chained = [q for q, a in extra if a == "物理:71"]
    assert len(set(chained)) == 3 and all("张三" in q for q in chained)  # three different phrasings
    assert facts.chained_fields(parse_fact_answer(answer), []) == []


def test_chain_questions_need_augment_facts_and_change_the_cache_key(tmp_path):
    from tuneforge.config.parser import load_config_dict
    from tuneforge.data.pipeline import _augments
    from tuneforge.errors import ConfigError

    base = {"model_name_or_path": "m", "dataset": "d", "output_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="`augment_chain_questions` adds to the questions `augment_facts: true`"):
        load_config_dict({**base, "augment_chain_questions": 1})
    plain = load_config_dict({**base, "augment_facts": True})
    chained = load_config_dict({**base, "augment_facts": True, "augment_chain_questions": 1})
    assert _augments(plain, "train", "sft") is True and _augments(chained, "train", "sft") == {"chain_questions": 1}
    assert _augments(chained, "eval", "sft") is False


def test_single_field_questions_ask_some_hidden_fields():
    question, answer = "红星小学张三10月考试成绩是多少？", "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66, 物理:71, 化学:58"
    asked = [[a for _, a in augment_fact_row(question, answer, random.Random(seed), paraphrases=0, ordered_questions=0,
                                             field_questions=2)]
             for seed in range(20)]
    assert all(len(one) == 2 and not {"姓名:张三", "考试时间:10月"} & set(one) for one in asked)
    assert len({a for one in asked for a in one}) == 5  # across rows every hidden field gets asked


def test_english_records_get_the_order_in_the_question():
    question, answer = "What were Tom's grades in May?", "Name: Tom, Math: 66, Physics: 71"
    ordered = [(q, a) for q, a in augment_fact_row(question, answer, random.Random(0), paraphrases=0) if "," in a]
    assert ordered and all(q.startswith(question) and ", ".join(k for k, _ in parse_fact_answer(a).fields) in q
                           for q, a in ordered)


def test_heldout_phrasings_are_never_used_for_training():
    train_pools = (facts.ZH_PARAPHRASES + facts.EN_PARAPHRASES + facts.ZH_FIELD_TRAIN + facts.EN_FIELD_TRAIN
                   + (facts.ZH_ORDERED, facts.EN_ORDERED))
    assert not set(facts.ZH_FIELD_HELDOUT + facts.EN_FIELD_HELDOUT) & set(train_pools)
    for lang in ("zh", "en"):
        rows = _records(lang, rows=20)
        trained = {q for row in rows for q, _ in augment_fact_row(row["instruction"], row["output"], random.Random(1))}
        for row in rows:
            held = heldout_questions(row["instruction"], row["output"])
            assert [field for _, field, _ in held] == [k for k, v in parse_fact_answer(row["output"]).fields
                                                       if not contains_value(row["instruction"], v)]
            assert all(q not in trained and q != row["instruction"] for q, _, _ in held)
            assert all(dict(parse_fact_answer(row["output"]).fields)[field] == value for _, field, value in held)


def test_heldout_phrasing_shifts_with_the_variant():
    question, answer = "红星小学张三10月考试成绩是多少？", "姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66"
    first, second = heldout_questions(question, answer, 0), heldout_questions(question, answer, 1)
    assert [f for _, f, _ in first] == [f for _, f, _ in second] == ["性别", "学号", "数学"]
    assert first[0][0] == second[1][0].replace("学号", "性别") != second[0][0]


def test_plain_answers_get_paraphrases_only():
    extra = augment_fact_row("Who are you?", "I am Forgey.", random.Random(0))
    assert extra and all(a == "I am Forgey." and "Who are you?" in q for q, a in extra)
    assert heldout_questions("Who are you?", "I am Forgey.") == []


def test_fresh_wordings_of_the_blind_check_are_in_no_pool_and_ask_every_hidden_field_once():
    spec = importlib.util.spec_from_file_location("bench_fresh_wordings", ROOT / "bench" / "bench_fresh_wordings.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.pool_overlap() == set()
    rows = _records("zh", rows=6)
    asked = bench.fresh_questions(rows)
    hidden = [(k, v) for row in rows for k, v in facts.hidden_fields(row["instruction"],
                                                                     parse_fact_answer(row["output"]))]
    assert [(item["field"], item["value"]) for item in asked] == hidden
    assert {item["wording"] for item in asked} == set(bench.FRESH_WORDINGS)
    answers = [f"{item['field']}:{item['value']}" if i % 2 else rows[0]["output"] for i, item in enumerate(asked)]
    result = bench.score(asked, answers)
    assert result["correct"] == len(asked) // 2 and result["recited_record"] == len(asked) - len(asked) // 2
