"""GRPO's reward functions: built-in ones by name, a user's own by `file.py:function`, combined with weights.

Every reward function is called as `fn(prompts=[...], completions=[...], references=[...])` (one entry per
completion; a reference is the dataset's answer or None) and returns one number per completion. Built-in:

* `accuracy`: 1.0 when the completion's answer equals the reference, else 0.0. The answer is the content of
  the last `\\boxed{...}`, else of `<answer>...</answer>`, else what follows the last "answer is" / "答案是" /
  "答案：", else the last number in the text; compared as numbers when both are numbers (`1,234`, `3/4`,
  `50%`, full-width digits), else as text with case and surrounding spaces and punctuation ignored.
* `format`: 1.0 for `<think>...</think>` followed by `<answer>...</answer>` and nothing else, else 0.0.
* `length`: -(completion characters / 1000), a gentle push towards short answers.

A function that raises, returns the wrong number of values or a non-number stops the run with a message
naming the function and the sample (RewardError).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from tuneforge.errors import ConfigError, TuneforgeError

RewardFn = Callable[..., Sequence[float]]


class RewardError(TuneforgeError):
    """A reward function failed or returned something that is not one number per completion."""


_BOXED = re.compile(r"\\boxed\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS = re.compile(r"(?:answer\s*(?:is|:)|答案\s*(?:是|为|:|：))\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\.\d+")
_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
_EDGES = " \t\r\n.。,，:：;；!！?？\"'“”‘’$()（）"


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def extract_answer(text: str) -> str:
    """The part of a completion that states its answer (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    stated = [part.strip() for part in _ANSWER_IS.findall(text) if part.strip()]  # "answer is   " states nothing
    if stated:
        return stated[-1].splitlines()[0].strip(_EDGES)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


def parse_number(text: str) -> Fraction | None:
    """`1,234` / `-3.5` / `3/4` / `50%` / `１２` -> an exact number; None when the text is not one number."""
    text = unicodedata.normalize("NFKC", text).strip().strip(_EDGES).replace(",", "")
    percent = text.endswith("%")
    text = text.removesuffix("%").strip()
    try:
        value = Fraction(text.replace(" ", "")) if "/" in text else Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def answers_match(answer: str, reference: str) -> bool:
    a, b = parse_number(answer), parse_number(reference)
    if a is not None and b is not None:
        return a == b
    if b is not None:  # a number expected: the answer's last number counts ("42 apples")
        numbers = _NUMBER.findall(unicodedata.normalize("NFKC", answer))
        return bool(numbers) and parse_number(numbers[-1]) == b
    normalise = lambda s: unicodedata.normalize("NFKC", s).strip().strip(_EDGES).casefold()  # noqa: E731
    return normalise(answer) == normalise(reference)


def accuracy_reward(prompts, completions, references) -> list[float]:
    return [0.0 if ref is None else float(answers_match(extract_answer(c), str(ref)))
            for c, ref in zip(completions, references)]


def format_reward(prompts, completions, references) -> list[float]:
    return [float(bool(_FORMAT.match(c))) for c in completions]


def length_reward(prompts, completions, references) -> list[float]:
    return [-len(c) / 1000 for c in completions]


BUILTIN_REWARDS: dict[str, RewardFn] = {"accuracy": accuracy_reward, "format": format_reward, "length": length_reward}


def load_reward_function(spec: str, base_dir: Path | None) -> tuple[str, RewardFn]:
    """A built-in name, or `path/to/file.py:function` (relative paths from the config's folder, then the cwd)."""
    if spec in BUILTIN_REWARDS:
        return spec, BUILTIN_REWARDS[spec]
    file_part, sep, name = spec.rpartition(":")
    if not sep or not file_part.endswith(".py") or not name.isidentifier():
        raise ConfigError(f"reward_funcs: {spec!r} is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor "
                          "`file.py:function`")
    candidates = [Path(file_part)] if Path(file_part).is_absolute() else \
        [p for p in ((base_dir / file_part) if base_dir else None, Path.cwd() / file_part) if p is not None]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ConfigError(f"reward_funcs: {spec!r}: file {file_part} not found (looked in "
                          f"{', '.join(str(p.parent) for p in candidates)})")
    module_spec = importlib.util.spec_from_file_location(f"tuneforge_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 -- the user's file: say which one failed and how
        raise ConfigError(f"reward_funcs: importing {path} failed: {type(err).__name__}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"reward_funcs: {path} has no function `{name}`")
    return spec, function


def compute_rewards(functions: Sequence[tuple[str, RewardFn]], weights: Sequence[float], prompts: Sequence[str],
                    completions: Sequence[str], references: Sequence[str | None]) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, each function's own values)."""
    per_function: dict[str, list[float]] = {}
    for name, function in functions:
        try:
            values = list(function(prompts=list(prompts), completions=list(completions), references=list(references)))
        except Exception as err:  # noqa: BLE001 -- a user's function: stop with its name and the sample
            i = _failing_sample(function, prompts, completions, references)
            sample = (f"sample {i}: prompt {prompts[i][-200:]!r}, completion {completions[i][:200]!r}, reference "
                      f"{references[i]!r}") if i is not None else f"first completion: {completions[0][:200]!r}"
            raise RewardError(f"reward function `{name}` raised {type(err).__name__}: {err} ({sample})") from None
        if len(values) != len(completions):
            raise RewardError(f"reward function `{name}` returned {len(values)} values for {len(completions)} completions")
        for i, value in enumerate(values):
            if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise RewardError(f"reward function `{name}` returned {value!r} for completion {i} "
                                  f"({completions[i][:200]!r}); expected a finite number")
        per_function[name] = [float(v) for v in values]
    totals = [sum(w * per_function[name][i] for (name, _), w in zip(functions, weights)) for i in range(len(completions))]
    return totals, per_function


def _failing_sample(function: RewardFn, prompts, completions, references) -> int | None:
    """The first completion the function fails on when called on it alone (None: it fails only in a batch)."""
    for i in range(len(completions)):
        try:
            function(prompts=[prompts[i]], completions=[completions[i]], references=[references[i]])
        except Exception:  # noqa: BLE001
            return i
    return None
