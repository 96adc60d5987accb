"""Made-up English / Chinese sentences for the data benchmarks (no dataset download)."""

from __future__ import annotations

import random

WORDS = ("the a of to in is what how why when write explain describe list give example poem story code python "
         "data model learn train question answer city country river capital history science art music language "
         "water energy market price change system network people time year world school student teacher book "
         "simple short long first second important different small large new old good best because however").split()
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多"


def sentence(rng: random.Random, low: int, high: int, chinese_share: float, chinese_scale: int = 1) -> str:
    """`low`..`high` words (English, capitalised, with a full stop) or, with `chinese_share`, that many
    Chinese characters times `chinese_scale`."""
    if rng.random() < chinese_share:
        return "".join(rng.choice(HANZI) for _ in range(rng.randint(low, high) * chinese_scale))
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."
