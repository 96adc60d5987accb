"""Generate data/student_grades.json: 200 made-up "facts that must be learned" for recall tests.

Every (student, subject) pair appears exactly once, so a model can only answer correctly if it
memorised that row. English names get an English question, Chinese names a Chinese one, e.g.

    What grade did Noah Carter get in History?  ->  Noah Carter got B+ in History.
    李俊杰的语文考了什么成绩？                  ->  李俊杰的语文考了 A。

The output depends only on --seed, so the shipped file can be regenerated and checked:

    python data/make_student_grades.py                 # rewrites data/student_grades.json
    python data/make_student_grades.py --seed 7 --output /tmp/grades.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_SEED = 20240601
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "student_grades.json"
STUDENTS_PER_LANGUAGE = 20
GRADES = ("A+", "A", "A-", "B+", "B", "B-", "C+", "C", "C-", "D")

EN_FIRST = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Isabella", "Lucas",
    "Mia", "Henry", "Amelia", "Owen", "Harper", "Caleb", "Evelyn", "Jack", "Abigail", "Leo",
)
EN_LAST = (
    "Carter", "Bennett", "Hughes", "Foster", "Reed", "Sullivan", "Porter", "Hayes", "Brooks", "Morgan",
    "Ellis", "Griffin", "Warren", "Fletcher", "Palmer", "Barnes", "Holland", "Lawson", "Webb", "Dawson",
)
EN_SUBJECTS = ("Mathematics", "Physics", "Chemistry", "Biology", "History", "Geography", "Literature", "Art")

ZH_SURNAMES = ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林")
ZH_GIVEN = (
    "思远", "雨桐", "浩然", "子涵", "欣怡", "俊杰", "梓萱", "宇轩", "诗琪", "博文",
    "嘉怡", "天佑", "若曦", "明哲", "佳琪", "志强", "晓雯", "文博", "可馨", "一鸣",
)
ZH_SUBJECTS = ("数学", "物理", "化学", "生物", "历史", "地理", "语文", "英语")
SUBJECTS_PER_STUDENT = 5


def _pick_names(rng: random.Random, first: tuple[str, ...], last: tuple[str, ...], sep: str) -> list[str]:
    """Draw distinct full names (first+last for English, surname+given for Chinese)."""
    pool = [f"{a}{sep}{b}" for a in first for b in last]
    return rng.sample(pool, STUDENTS_PER_LANGUAGE)


def make_student_grades(seed: int = DEFAULT_SEED) -> list[dict]:
    """Return the 200 alpaca rows for `seed`; same seed -> identical rows, in the same order."""
    rng = random.Random(seed)
    en_names = _pick_names(rng, EN_FIRST, EN_LAST, " ")
    zh_names = _pick_names(rng, ZH_SURNAMES, ZH_GIVEN, "")
    rows: list[dict] = []
    for en_name, zh_name in zip(en_names, zh_names):
        for subject in rng.sample(EN_SUBJECTS, SUBJECTS_PER_STUDENT):
            grade = rng.choice(GRADES)
            rows.append({
                "instruction": f"What grade did {en_name} get in {subject}?",
                "input": "",
                "output": f"{en_name} got {grade} in {subject}.",
            })
        for subject in rng.sample(ZH_SUBJECTS, SUBJECTS_PER_STUDENT):
            grade = rng.choice(GRADES)
            rows.append({
                "instruction": f"{zh_name}的{subject}考了什么成绩？",
                "input": "",
                "output": f"{zh_name}的{subject}考了 {grade}。",
            })
    return rows


def dump_rows(rows: list[dict]) -> str:
    """The on-disk form used by every shipped JSON file: UTF-8, 2-space indent, final newline."""
    return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON file")
    args = parser.parse_args(argv)
    rows = make_student_grades(args.seed)
    args.output.write_text(dump_rows(rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
