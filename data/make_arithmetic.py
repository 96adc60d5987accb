"""Writes the GRPO demo's arithmetic word problems (English and Chinese, alpaca format, the answer as the reference):
data/arithmetic_train.json and data/arithmetic_heldout.json. Self-written templates; seeded, so the files are
reproducible:

    python data/make_arithmetic.py [--train 240] [--heldout 60] [--seed 7] [--max-number 12]

Each problem is one addition or subtraction of two numbers up to --max-number (default 12) told as a story; the
instruction asks for the number only, which the `accuracy` reward reads (its last number; train/rewards.py).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES_EN = ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Leo", "Emma", "Max", "Zoe"]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "小芳", "小军", "小燕", "小东", "小雪"]
THINGS_EN = ["apples", "books", "pencils", "stickers", "marbles", "cards", "coins", "shells"]
THINGS_ZH = [("个", "苹果"), ("本", "书"), ("支", "铅笔"), ("张", "贴纸"), ("颗", "弹珠"), ("张", "卡片"), ("枚", "硬币"), ("个", "贝壳")]

ADD_EN = ["{n} has {a} {t}. {n} gets {b} more {t}. How many {t} does {n} have now?",
          "There are {a} {t} in a box and {b} {t} on the table. How many {t} are there in total?",
          "{n} bought {a} {t} on Monday and {b} {t} on Tuesday. How many {t} did {n} buy?"]
SUB_EN = ["{n} has {a} {t} and gives {b} of them away. How many {t} are left?",
          "A shop had {a} {t} and sold {b}. How many {t} does the shop have left?",
          "{n} collected {a} {t} and lost {b}. How many {t} does {n} still have?"]
ADD_ZH = ["{n}有{a}{u}{t}，又得到了{b}{u}。{n}现在有多少{u}{t}？",
          "盒子里有{a}{u}{t}，桌子上有{b}{u}{t}。一共有多少{u}{t}？",
          "{n}星期一买了{a}{u}{t}，星期二又买了{b}{u}。{n}一共买了多少{u}{t}？"]
SUB_ZH = ["{n}有{a}{u}{t}，送给别人{b}{u}。还剩多少{u}{t}？",
          "商店原有{a}{u}{t}，卖出了{b}{u}。商店还剩多少{u}{t}？",
          "{n}收集了{a}{u}{t}，丢了{b}{u}。{n}还有多少{u}{t}？"]
INSTRUCTION_EN = "Answer with the number only.\n\n"
INSTRUCTION_ZH = "只回答数字。\n\n"


def make_problem(rng: random.Random, lang: str, max_number: int) -> dict:
    subtract = rng.random() < 0.5
    a, b = rng.randint(1, max_number), rng.randint(1, max_number)
    if subtract and b > a:
        a, b = b, a
    answer = a - b if subtract else a + b
    if lang == "en":
        template = rng.choice(SUB_EN if subtract else ADD_EN)
        text = template.format(n=rng.choice(NAMES_EN), t=rng.choice(THINGS_EN), a=a, b=b)
        return {"instruction": INSTRUCTION_EN + text, "input": "", "output": str(answer)}
    unit, thing = rng.choice(THINGS_ZH)
    text = rng.choice(SUB_ZH if subtract else ADD_ZH).format(n=rng.choice(NAMES_ZH), u=unit, t=thing, a=a, b=b)
    return {"instruction": INSTRUCTION_ZH + text, "input": "", "output": str(answer)}


def make_set(count: int, rng: random.Random, seen: set[str], max_number: int) -> list[dict]:
    rows = []
    while len(rows) < count:
        row = make_problem(rng, "en" if len(rows) % 2 == 0 else "zh", max_number)
        if row["instruction"] not in seen:  # held-out problems never appear in training
            seen.add(row["instruction"])
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--heldout", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-number", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    rng, seen = random.Random(args.seed), set()
    for name, count in (("arithmetic_train", args.train), ("arithmetic_heldout", args.heldout)):
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(make_set(count, rng, seen, args.max_number), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {count} problems to {path}")


if __name__ == "__main__":
    main()
