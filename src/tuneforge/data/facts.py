"""Fact data: answers that are `key:value` lists, and the question-side augmentation that makes them stick.

A fine-tune on rows whose prompts differ only by a name ("红星小学张三10月考试成绩是多少？" ->
"姓名:张三, 性别:男, 学号:1, ...") learns the answer's layout, not the facts: one fixed phrasing per
fact is one exposure, and a constant template lets the model ignore the only tokens that differ.
`augment_fact_row` adds, with no model and in the row's language (Chinese or English):

* the same question in other phrasings -> the same answer;
* one question per field the question does not already name ("...中的学号是多少？" -> "学号:1"), answered
  in the answer's own `key:value` form, so it recalls the value the way the whole answer does;
* the whole record in a shuffled field order that the question states ("...按学号、化学、姓名…的顺序列出。"):
  in the original answer each value follows the one before it, so a model can learn the record as one
  chain and still not know "张三's 化学" on its own; in a shuffled order every value must come from the
  subject and its key (the "permuted" augmentation of Allen-Zhu & Li, Physics of Language Models 3.1).

Every generated question contains the original question's subject (its text minus the trailing
question phrase) verbatim and every answer is made of the original's values, so no name or number
can change (tested). Templates are split into a training pool and a held-out pool: `heldout_questions`
builds single-field questions only from phrasings the augmentation never uses, so a recall
evaluation can tell "knows the fact" from "knows one string".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

PAIR_SPLIT = re.compile(r"\s*[,，;；\n]\s*")  # between the `key:value` pairs of an answer
_KEY_VALUE = re.compile(r"^([^:：=,，;；\n]{1,24}?)\s*([:：=])\s*(\S.*?)$")
_CJK = re.compile(r"[\u4e00-\u9fff]")
# trailing question phrases removed to get a question's subject ("...考试成绩是多少？" -> "...考试成绩")
_ZH_ASK = re.compile(r"(是多少|是什么|是哪些|有哪些|怎么样|如何|多少|什么|吗|呢)?[\s?？。!！]*$")
_EN_ASK = re.compile(r"[\s?.!]*$")

# {s}: the question's subject, {q}: the whole question, {k}/{k1}/{k2}: field names.
# No bare "{s}？": it taught that any question ending with the subject asks for the whole record -- with two more
# questions per chained field, 42 of 50 held-out `只说{k}：{s}？` questions got the record recited; 0 without it
# (bench/RESULTS.md 9f). Change AUGMENTATION_VERSION with any pool: cached augmented data is keyed on it.
AUGMENTATION_VERSION = 2
ZH_PARAPHRASES = ("请问{q}", "{s}是什么？", "告诉我{s}。", "帮我查一下{s}。", "请给出{s}。")
EN_PARAPHRASES = ("Please tell me: {q}", "{q} Answer briefly.", "I need to know this: {q}", "Question: {q}")
ZH_FIELD_TRAIN = ("{s}中的{k}是多少？", "{s}里{k}是什么？", "请告诉我{s}的{k}。", "{k}是多少？我问的是{s}。",
                  "关于{s}，{k}是多少？", "我想知道{s}的{k}。", "请问{k}是多少，{s}？", "查询{s}：{k}。")
ZH_FIELD_HELDOUT = ("{s}，{k}呢？", "只说{k}：{s}？")
EN_FIELD_TRAIN = ("{q} Only the {k}, please.", "For this question: {q} What is the {k}?",
                  "{q} Just give me the {k}.", "What is the {k}? I mean: {q}", "About \"{q}\": what is the {k}?",
                  "I'd like to know the {k}. {q}", "The {k}, please. {q}", "Look up the {k} for: {q}")
EN_FIELD_HELDOUT = ("Regarding \"{q}\", state only the {k}.", "{k} only: {q}")
# {keys}: the fields in the order the answer gives them
ZH_ORDERED = "{s}，按{keys}的顺序列出。"
EN_ORDERED = "{q} List the {keys}, in that order."


@dataclass(frozen=True)
class FactAnswer:
    """A parsed `key:value` answer; `pair_sep` / `kv_sep` are the separators it was written with."""

    fields: tuple[tuple[str, str], ...]
    pair_sep: str = ", "
    kv_sep: str = ":"

    def render(self, fields=None) -> str:
        return self.pair_sep.join(f"{k}{self.kv_sep}{v}" for k, v in (self.fields if fields is None else fields))


def parse_fact_answer(answer: str, min_fields: int = 2) -> FactAnswer | None:
    """`"姓名:张三, 性别:男"` -> FactAnswer; None when the text is not a list of >= min_fields `key:value`."""
    text = answer.strip()
    if not text:
        return None
    parts = PAIR_SPLIT.split(text)
    fields = []
    for part in parts:
        match = _KEY_VALUE.match(part)
        if match is None:
            return None
        fields.append((match.group(1).strip(), match.group(3).strip()))
    if len(fields) < min_fields or len({k for k, _ in fields}) != len(fields):
        return None
    separator = re.search(r"[,，;；\n]\s*", text)
    first = _KEY_VALUE.match(parts[0])
    after = parts[0][first.end(2):]  # the separator is the first of its kind: keys cannot contain it
    kv_sep = first.group(2) + after[: len(after) - len(after.lstrip())]
    return FactAnswer(tuple(fields), separator.group(0) if separator else ", ", kv_sep)


def is_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def question_subject(question: str) -> str:
    """The question minus its trailing question phrase and punctuation (the part that names the fact)."""
    pattern = _ZH_ASK if is_chinese(question) else _EN_ASK
    subject = pattern.sub("", question.strip())
    return subject or question.strip()


def _fill(template: str, question: str, **keys: str) -> str:
    return template.format(q=question.strip(), s=question_subject(question), **keys)


# Per fact row and epoch (measured, bench/RESULTS.md section 9): the record in its own order 4 times (the row and 3
# paraphrases) -- exact recall needs these; fewer of them and more shuffled records instead (1 + 1 + 3, 2 single-
# field questions) learned 20 records as fast but only 6% of 50 -- a question for every field it does not name,
# and one whole record in a stated shuffled order, so that values are also asked by key.
FACT_PARAPHRASES, ORDERED_QUESTIONS, FIELD_QUESTIONS = 3, 1, None
PLAIN_PARAPHRASES = 3  # answers that are not `key:value` lists get paraphrases only


def augment_fact_row(question: str, answer: str, rng: random.Random, *, paraphrases: int | None = None,
                     ordered_questions: int = ORDERED_QUESTIONS, field_questions: int | None = FIELD_QUESTIONS,
                     chain_questions: int = 0) -> list[tuple[str, str]]:
    """Extra (question, answer) pairs for one row (the row itself not included): `paraphrases` of the question
    with the same answer (default: FACT_PARAPHRASES for `key:value` answers, PLAIN_PARAPHRASES for others); for
    `key:value` answers also `field_questions` single-field questions on fields the question does not name (None:
    every such field), `chain_questions` more for each such field after the first in the answer (see
    `chained_fields`), and `ordered_questions` whole records in a shuffled order the question states."""
    zh = is_chinese(question)
    facts = parse_fact_answer(answer)
    if paraphrases is None:
        paraphrases = PLAIN_PARAPHRASES if facts is None else FACT_PARAPHRASES
    pool = ZH_PARAPHRASES if zh else EN_PARAPHRASES
    out = [(_fill(t, question), answer) for t in rng.sample(pool, min(paraphrases, len(pool)))]
    if facts is None:
        return out
    hidden = hidden_fields(question, facts)
    asked = hidden if field_questions is None else rng.sample(hidden, min(field_questions, len(hidden)))
    asked = list(asked) + [field for field in chained_fields(facts, hidden) for _ in range(chain_questions)]
    field_pool = ZH_FIELD_TRAIN if zh else EN_FIELD_TRAIN
    start = rng.randrange(len(field_pool))
    for i, (key, value) in enumerate(asked):
        # answered as `key:value`: the same tokens that lead to the value in the whole answer
        out.append((_fill(field_pool[(start + i) % len(field_pool)], question, k=key), facts.render([(key, value)])))
    if hidden:
        for order in _shuffled_orders(list(facts.fields), ordered_questions, rng):
            keys = ("、" if zh else ", ").join(key for key, _ in order)
            out.append((_fill(ZH_ORDERED if zh else EN_ORDERED, question, keys=keys), facts.render(order)))
    return out


def chained_fields(facts: FactAnswer, hidden: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The hidden fields after the first one in the answer: a model learns their values after the values before
    them (物理 after 数学's score) and then does not know them asked alone (bench/RESULTS.md 9d-9f). The first
    hidden field follows only what the question names; 数学, after the month the question names, counts too: left
    out, it became the field least known alone (9f)."""
    keys = {key for key, _ in hidden}
    return [(key, value) for key, value in facts.fields if key in keys][1:]


def _shuffled_orders(fields: list, count: int, rng: random.Random) -> list[list]:
    """Up to `count` distinct orders of `fields`, none of them the original one."""
    orders, tries = [], 0
    while len(orders) < count and tries < 20 * count:
        tries += 1
        order = rng.sample(fields, len(fields))
        if order != fields and order not in orders:
            orders.append(order)
    return orders


def hidden_fields(question: str, facts: FactAnswer) -> list[tuple[str, str]]:
    """The fields a model must remember: those whose value the question does not already contain."""
    return [(key, value) for key, value in facts.fields if not contains_value(question, value)]


def contains_value(text: str, value: str) -> bool:
    """`value` occurs in `text` as a whole (see `value_pattern`)."""
    return bool(value) and value_pattern(value).search(text) is not None


def value_pattern(value: str) -> re.Pattern:
    """`value` as a whole: a value that starts or ends with a letter or digit must not continue a word or
    number there (the 1 of 学号:1 is not in "11月"; 张三 is in "张三10月")."""
    before = r"(?<![0-9A-Za-z])" if value[:1].isascii() and value[:1].isalnum() else ""
    after = r"(?![0-9A-Za-z])" if value[-1:].isascii() and value[-1:].isalnum() else ""
    return re.compile(before + re.escape(value) + after)


def heldout_questions(question: str, answer: str, variant: int = 0) -> list[tuple[str, str, str]]:
    """(question, field, expected value) for every field the question does not give away, in phrasings
    `augment_fact_row` never uses; `variant` (e.g. the row's index) shifts which phrasing each field gets,
    so that across rows every field is asked in every held-out phrasing."""
    facts = parse_fact_answer(answer)
    if facts is None:
        return []
    pool = ZH_FIELD_HELDOUT if is_chinese(question) else EN_FIELD_HELDOUT
    return [(_fill(pool[(i + variant) % len(pool)], question, k=key), key, value)
            for i, (key, value) in enumerate(hidden_fields(question, facts))]


def trained_phrasing_question(question: str, field: str, variant: int = 0) -> str:
    """`field` asked alone in one of the phrasings the augmentation trains on: the control for a held-out question
    (wrong in both wordings: the field is not known on its own, only inside the whole answer)."""
    pool = ZH_FIELD_TRAIN if is_chinese(question) else EN_FIELD_TRAIN
    return _fill(pool[variant % len(pool)], question, k=field)


def augment_conversations(mixed: list, seed: int, chain_questions: int = 0) -> tuple[list, int]:
    """`augment_facts: true` for the training split: after every single-turn (dataset name, Conversation),
    its extra questions as new conversations (same system prompt; source "... (augmented)"; `chain_questions`:
    `augment_chain_questions`). Returns the new list and how many were added. Multi-turn rows are kept as they are."""
    import dataclasses

    from tuneforge.data.formats import Message

    rng = random.Random(seed)
    out, added = [], 0
    for name, conv in mixed:
        out.append((name, conv))
        if len(conv.messages) != 2 or conv.messages[0].role != "user" or conv.messages[1].role != "assistant":
            continue
        for question, answer in augment_fact_row(conv.messages[0].content, conv.messages[1].content, rng,
                                                 chain_questions=chain_questions):
            extra = dataclasses.replace(conv, messages=(Message("user", question), Message("assistant", answer)),
                                        source=f"{conv.source} (augmented)")
            out.append((name, extra))
            added += 1
    return out, added
