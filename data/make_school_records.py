"""Generate school exam records: the classic "fine-tuned, loss went down, learned none of the facts" data.

Every row asks for one student's exam results in one fixed phrasing; the prompts differ only by the
school, the name and the month, and each answer is a `key:value` list of facts that appear nowhere
else (gender, student id, three scores):

    红星小学张三10月考试成绩是多少？
      -> 姓名:张三, 性别:男, 学号:1, 考试时间:10月, 数学:66, 物理:71, 化学:58
    What were Emma Brooks's October exam results at Red Star Primary School?
      -> Name: Emma Brooks, Gender: female, Student ID: 2, Exam month: October, Math: 88, Physics: 47, Chemistry: 93

The output depends only on the arguments (same seed -> the same rows):

    python data/make_school_records.py --rows 50 --lang zh --output data/school_records_zh50.json
    python data/make_school_records.py --rows 200 --lang zh --output /tmp/school_records_zh200.json
    python data/make_school_records.py --rows 100 --lang both --seed 7 --output /tmp/records.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_SEED = 1010
SUBJECTS = {"zh": ("数学", "物理", "化学"), "en": ("Math", "Physics", "Chemistry")}
ZH_SCHOOLS = ("红星小学", "育才小学", "实验小学", "光明小学")
EN_SCHOOLS = ("Red Star Primary School", "Riverside Primary School", "Oak Hill Primary School", "Lakeside Primary School")
ZH_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧"
# given names with the gender they are usually given to (the answer states the gender as a fact)
ZH_GIVEN = {"男": ("伟", "强", "磊", "军", "洋", "勇", "杰", "涛", "明", "超", "浩然", "子轩", "宇航", "俊杰", "博文"),
            "女": ("芳", "娜", "敏", "静", "丽", "艳", "娟", "霞", "婷", "雪", "雨桐", "欣怡", "梓涵", "诗琪", "佳怡")}
EN_FIRST = {"male": ("Liam", "Noah", "Oliver", "James", "Lucas", "Henry", "Ethan", "Mason", "Leo", "Owen"),
            "female": ("Emma", "Olivia", "Ava", "Sophia", "Mia", "Amelia", "Harper", "Ella", "Grace", "Chloe")}
EN_LAST = ("Brooks", "Carter", "Hughes", "Foster", "Reed", "Porter", "Hayes", "Morgan", "Ellis", "Griffin",
           "Warren", "Palmer", "Barnes", "Lawson", "Webb", "Dawson", "Bennett", "Sullivan", "Fletcher", "Holland")
EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December")
MONTHS = (3, 4, 5, 6, 9, 10, 11, 12)  # school months


def _zh_row(rng: random.Random, student_id: int, used: set[str]) -> dict:
    while True:
        gender = rng.choice(("男", "女"))
        name = rng.choice(ZH_SURNAMES) + rng.choice(ZH_GIVEN[gender])
        school, month = rng.choice(ZH_SCHOOLS), rng.choice(MONTHS)
        key = f"{school}{name}{month}"
        if key not in used:
            break
    used.add(key)
    scores = [rng.randint(40, 100) for _ in SUBJECTS["zh"]]
    fields = [("姓名", name), ("性别", gender), ("学号", str(student_id)), ("考试时间", f"{month}月"),
              *zip(SUBJECTS["zh"], map(str, scores))]
    return {"instruction": f"{school}{name}{month}月考试成绩是多少？", "input": "",
            "output": ", ".join(f"{k}:{v}" for k, v in fields)}


def _en_row(rng: random.Random, student_id: int, used: set[str]) -> dict:
    while True:
        gender = rng.choice(("male", "female"))
        name = f"{rng.choice(EN_FIRST[gender])} {rng.choice(EN_LAST)}"
        school, month = rng.choice(EN_SCHOOLS), EN_MONTHS[rng.choice(MONTHS) - 1]
        key = f"{school}|{name}|{month}"
        if key not in used:
            break
    used.add(key)
    scores = [rng.randint(40, 100) for _ in SUBJECTS["en"]]
    fields = [("Name", name), ("Gender", gender), ("Student ID", str(student_id)), ("Exam month", month),
              *zip(SUBJECTS["en"], map(str, scores))]
    return {"instruction": f"What were {name}'s {month} exam results at {school}?", "input": "",
            "output": ", ".join(f"{k}: {v}" for k, v in fields)}


def make_school_records(rows: int = 50, lang: str = "zh", seed: int = DEFAULT_SEED) -> list[dict]:
    """`rows` records (`lang`: zh, en, or both alternating); student ids 1..rows; same arguments -> same rows."""
    if lang not in ("zh", "en", "both"):
        raise ValueError(f"lang: expected zh, en or both, got {lang!r}")
    rng = random.Random(seed)
    used: set[str] = set()
    out = []
    for student_id in range(1, rows + 1):
        zh = lang == "zh" or (lang == "both" and student_id % 2 == 1)
        out.append(_zh_row(rng, student_id, used) if zh else _en_row(rng, student_id, used))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50, help="number of records (default 50)")
    parser.add_argument("--lang", choices=("zh", "en", "both"), default="zh", help="language of the records")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--output", type=Path, required=True, help="where to write the JSON file")
    args = parser.parse_args(argv)
    rows = make_school_records(args.rows, args.lang, args.seed)
    args.output.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
