"""Single-field questions in wordings no pool of `data/facts.py` uses (neither training nor held-out), asked of
trained fact models: a blind check for a change to the phrasing pools that was found by reading held-out failures.

    .venv/bin/python bench/bench_fresh_wordings.py OUT_DIR RECORDS.json [OUT_DIR RECORDS.json ...] --out R.json

OUT_DIR is a full model folder `tuneforge train examples/memorize_facts.yaml` wrote, RECORDS.json the alpaca rows it
was trained on (bench_memorize.py's `<workdir>/<run>/data/records.json`). The model is read with plain transformers
and asked through the tokenizer's own chat template, greedily, in batches; every hidden field of every row once,
the wording shifting with the row (as `eval recall`'s held-out questions do); scored with `eval recall`'s
held-out rule. Prints correct / asked per wording and per field, and how many answers recited the record.
"""

from __future__ import annotations

import argparse
import collections
import json

# Chinese wordings never used by the augmentation nor by `eval recall` (`pool_overlap`)
FRESH_WORDINGS = ("单独说一下{s}的{k}。", "{k}？（{s}）", "仅回答{k}：{q}")


def pool_overlap() -> set[str]:
    """The fresh wordings that a Chinese pool of `data/facts.py` also has (empty, or the check is not blind)."""
    from tuneforge.data import facts

    used = facts.ZH_PARAPHRASES + facts.ZH_FIELD_TRAIN + facts.ZH_FIELD_HELDOUT + (facts.ZH_ORDERED,)
    return set(FRESH_WORDINGS) & set(used)


def fresh_questions(records: list[dict]) -> list[dict]:
    from tuneforge.data.facts import hidden_fields, parse_fact_answer, question_subject

    asked = []
    for row_index, row in enumerate(records):
        question, subject = row["instruction"], question_subject(row["instruction"])
        for i, (key, value) in enumerate(hidden_fields(question, parse_fact_answer(row["output"]))):
            wording = FRESH_WORDINGS[(i + row_index) % len(FRESH_WORDINGS)]
            asked.append({"wording": wording, "field": key, "value": value, "subject": subject,
                          "question": wording.format(q=question.strip(), s=subject, k=key)})
    return asked


def greedy_answers(model_dir: str, questions: list[str], batch: int = 16, max_new_tokens: int = 24) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for start in range(0, len(questions), batch):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions[start:start + batch]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def score(asked: list[dict], answers: list[str]) -> dict:
    from tuneforge.evaluate.recall_metrics import heldout_correct, recites_record

    right, total = collections.Counter(), collections.Counter()
    for item, answer in zip(asked, answers):
        item["answer"], item["correct"] = answer, heldout_correct(answer, item["field"], item["value"], item["subject"])
        for group in (item["wording"], item["field"]):
            right[group] += item["correct"]
            total[group] += 1
    return {"asked": len(asked), "correct": sum(item["correct"] for item in asked),
            "by_wording": {w: f"{right[w]}/{total[w]}" for w in FRESH_WORDINGS},
            "by_field": {k: f"{right[k]}/{total[k]}" for k in total if k not in FRESH_WORDINGS},
            "recited_record": sum(recites_record(answer) for answer in answers), "rows": asked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="OUT_DIR RECORDS.json, repeated")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("expected pairs of OUT_DIR RECORDS.json")
    overlap = pool_overlap()
    if overlap:
        parser.error(f"wordings in a pool of data/facts.py, the check would not be blind: {sorted(overlap)}")
    results = []
    for model_dir, records_path in zip(args.pairs[::2], args.pairs[1::2]):
        with open(records_path, encoding="utf-8") as handle:
            asked = fresh_questions(json.load(handle))
        result = {"model": model_dir, "records": records_path,
                  **score(asked, greedy_answers(model_dir, [item["question"] for item in asked]))}
        results.append(result)
        print(f"{model_dir}: {result['correct']}/{result['asked']} "
              f"({100 * result['correct'] / result['asked']:.0f}%), recited {result['recited_record']}; "
              + "; ".join(f"{w} {c}" for w, c in result["by_wording"].items()), flush=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
