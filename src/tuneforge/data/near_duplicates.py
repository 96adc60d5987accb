"""Clusters of near-duplicate prompts: texts that are equal except for a few short spans (names, numbers, dates).

    units:     NFKC text, lower-cased, split into each CJK / kana / hangul character, each latin / greek /
               cyrillic word, each digit run (with . , : / - inside: 3.5, 2024-10-01) and each other symbol
    skeleton:  the units with every digit run replaced by "0"; rows with equal skeletons (only numbers differ)
               are one group at the cost of a dict lookup
    candidates: the distinct skeletons sorted by their units and by their reversed units; each is compared with
               its next WINDOW neighbours in both orders (a templated prompt shares a prefix or a suffix with its
               siblings, so they sort close together) - O(n log n), no pair loop
    verify:    after removing the common prefix and suffix, the rest aligns (difflib) with at most MAX_SPANS
               differing spans of at most `_max_span` units each, and at least MIN_SHARED of the longer prompt
               is shared
    clusters:  union-find over the verified pairs; what varies is read off up to VARY_SAMPLES members

"红星小学张三10月考试成绩是多少？" and "育才小学李四11月考试成绩是多少？" are one cluster (varying: 红星/育才, 张三/李四,
10/11); "北京的天气怎么样？" and "上海的人口有多少？" are not (one differing span is 5 units long).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

_NUMBER = r"\d+(?:[.,:/\-]\d+)*"
_UNITS = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]"  # one CJK / kana / hangul character
    rf"|{_NUMBER}"  # a number, a date, a time
    r"|[a-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff]+(?:['\u2019][a-z\u00c0-\u024f]+)*"  # a word (Emma's)
    r"|[^\s\w]|\w",  # any other symbol
    re.IGNORECASE,
)
_DIGITS = re.compile(_NUMBER)

WINDOW = 4  # neighbours compared in each sorted order
MAX_SPANS = 3  # differing spans allowed between two near-duplicates
MIN_SHARED = 0.6  # share of the longer prompt's units the two must have in common
MIN_UNITS = 4  # units two prompts must share (shorter prompts are only grouped when their skeletons are equal)
MAX_ALIGN = 512  # longer differing middles are not aligned (compared by prefix / suffix only)
VARY_SAMPLES = 30  # members read to say what varies


@dataclass(frozen=True)
class Cluster:
    rows: tuple[int, ...]  # indexes into the texts, ascending
    distinct: int  # distinct prompts among them (after normalisation)
    varies: tuple[tuple[str, ...], ...]  # per differing slot: the values seen (the first row's value first)
    # (empty beyond find_clusters' `describe` largest clusters)


def skeleton(text: str) -> tuple[str, ...]:
    """The normalised units of `text` with every number masked as "0"."""
    return tuple(_UNITS.findall(_DIGITS.sub("0", unicodedata.normalize("NFKC", text).lower())))


def _max_span(longer: int) -> int:
    return min(8, max(3, longer // 12))


def near(a: Sequence[str], b: Sequence[str]) -> bool:
    """True when skeletons `a` and `b` differ in at most MAX_SPANS short spans and share >= MIN_SHARED."""
    la, lb = len(a), len(b)
    longer, shortest = (la, lb) if la >= lb else (lb, la)
    limit = _max_span(longer)
    if shortest < MIN_UNITS or longer - shortest > MAX_SPANS * limit:
        return False
    need = max(MIN_UNITS, math.ceil(MIN_SHARED * longer))
    if shortest < need:  # not even a perfect alignment would share enough
        return False
    p = 0
    while p < shortest and a[p] == b[p]:
        p += 1
    s = 0
    while s < shortest - p and a[la - 1 - s] == b[lb - 1 - s]:
        s += 1
    am, bm = a[p : la - s], b[p : lb - s]
    if len(am) <= limit and len(bm) <= limit and p + s >= need:  # one differing span
        return True
    if len(am) > MAX_ALIGN or len(bm) > MAX_ALIGN:
        return False
    # some unit near each end of the middles is shared (a first / last differing span is at most `limit` long)
    head, tail = limit + 1, -limit - 1
    if not set(am[:head]).intersection(bm[:head]) or not set(am[tail:]).intersection(bm[tail:]):
        return False
    budget = MAX_SPANS * limit  # units of one side that can be outside the shared part
    in_b, in_a = set(bm), set(am)
    if sum(t not in in_b for t in am) > budget or sum(t not in in_a for t in bm) > budget:
        return False
    spans = shared = 0
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, am, bm, autojunk=False).get_opcodes():
        if tag == "equal":
            shared += i2 - i1
            continue
        spans += 1
        if spans > MAX_SPANS or max(i2 - i1, j2 - j1) > limit:
            return False
    return p + s + shared >= need


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


def find_clusters(texts: Sequence[str], min_rows: int = 3, describe: int = 20) -> list[Cluster]:
    """Clusters of >= `min_rows` rows whose prompts are near-duplicates of each other but not all identical,
    largest first; what varies is read for the first `describe` of them."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(skeleton(text), []).append(i)
    keys = list(groups)
    uf = _UnionFind(len(keys))
    for order in (sorted(range(len(keys)), key=keys.__getitem__),
                  sorted(range(len(keys)), key=lambda k: keys[k][::-1])):
        for pos, k in enumerate(order):
            for other in order[pos + 1 : pos + 1 + WINDOW]:
                root_k, root_other = uf.find(k), uf.find(other)
                # both pairs near: the two rows and the two clusters' first members (no drift along a chain)
                if root_k != root_other and near(keys[k], keys[other]) and near(keys[root_k], keys[root_other]):
                    uf.union(k, other)
    members: dict[int, list[int]] = {}
    for k in range(len(keys)):
        members.setdefault(uf.find(k), []).append(k)
    clusters = []
    for ks in members.values():
        rows = sorted(i for k in ks for i in groups[keys[k]])
        if len(rows) < min_rows:
            continue
        distinct = {_normalised(texts[i]) for i in rows}
        if len(distinct) < 2:  # the same prompt repeated: duplicates / conflicts, reported elsewhere
            continue
        clusters.append(Cluster(tuple(rows), len(distinct), ()))
    clusters.sort(key=lambda c: (-len(c.rows), c.rows[0]))
    return [replace(c, varies=_what_varies([texts[i] for i in c.rows])) if n < describe else c
            for n, c in enumerate(clusters)]


# ----------------------------------------------------------------------------- what varies
def _normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _units(text: str) -> tuple[str, list[tuple[int, int]], list[str], list[str]]:
    """(NFKC text, unit offsets, masked lower-case units, lower-case units)."""
    norm = unicodedata.normalize("NFKC", text)
    spans, masked, raw = [], [], []
    for m in _UNITS.finditer(norm):
        unit = m.group().lower()
        spans.append(m.span())
        raw.append(unit)
        masked.append("0" if _DIGITS.fullmatch(unit) else unit)
    return norm, spans, masked, raw


def _piece(text: str, spans: list[tuple[int, int]], i1: int, i2: int) -> str:
    return text[spans[i1][0] : spans[i2 - 1][1]] if i2 > i1 else "∅"


def _map(ops, b: int) -> int:
    """The position in the other text that position `b` of the first text aligns with."""
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal" and i1 <= b <= i2:
            return j1 + b - i1
        if b == i1:
            return j1
        if b == i2:
            return j2
    return ops[-1][4] if ops else 0


def _what_varies(texts: Sequence[str], limit: int = 6) -> tuple[tuple[str, ...], ...]:
    """Per slot of the first text that differs in the other members: the values seen (first text's value first).
    A slot is a run of the first text's units that differ in some member: "span" units (replaced, inserted
    next to, deleted) and "number" units (equal skeletons, other number) form separate slots."""
    first, *others = list(dict.fromkeys(texts))[: VARY_SAMPLES + 1]  # distinct, in order
    text0, spans0, masked0, raw0 = _units(first)
    parsed = [_units(other) for other in others]
    alignments = [SequenceMatcher(None, masked0, masked1, autojunk=False).get_opcodes() for _, _, masked1, _ in parsed]
    mark = [""] * len(masked0)
    for (_, _, _, raw1), ops in zip(parsed, alignments):
        for tag, i1, i2, j1, j2 in ops:
            if tag == "equal":
                for a in range(i1, i2):
                    if raw0[a] != raw1[j1 + a - i1] and not mark[a]:
                        mark[a] = "number"
            else:
                for a in range(i1, i2) if i2 > i1 else [min(i1, len(mark) - 1)]:
                    if a >= 0:
                        mark[a] = "span"
    slots, a = [], 0
    while a < len(mark):
        if not mark[a]:
            a += 1
            continue
        b = a + 1
        while b < len(mark) and mark[b] == mark[a] and mark[a] == "span":
            b += 1
        slots.append((a, b))
        a = b
    varies = []
    for a, b in slots:
        values = {_piece(text0, spans0, a, b): None}
        for (text1, spans1, _, _), ops in zip(parsed, alignments):
            values[_piece(text1, spans1, _map(ops, a), _map(ops, b))] = None
        varies.append(tuple(list(values)[:limit]))
    return tuple(varies)


def describe_varies(varies: Sequence[Sequence[str]], per_slot: int = 3) -> str:
    """'张三/李四/王五…, 10/11' for a report line."""
    parts = []
    for values in varies:
        shown = "/".join(values[:per_slot])
        parts.append(shown + ("/…" if len(values) > per_slot else ""))
    return ", ".join(parts)
