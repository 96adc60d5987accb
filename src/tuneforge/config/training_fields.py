"""The training keys (HF `Seq2SeqTrainingArguments` + LLaMA-Factory's additions) without importing transformers.

Validating a config must not wait for torch and transformers (~5 s): `training_fields.json` holds each
training key's name, type (enum types written as `str`, which is what a config file holds), default and
help, read from the installed transformers. `tests/test_config.py` compares it with the live class, so a
transformers upgrade that changes the keys fails the tests until it is regenerated:

    python -m tuneforge.config.training_fields --write
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from dataclasses import MISSING, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

SNAPSHOT = Path(__file__).with_name("training_fields.json")
_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list, "tuple": tuple,
          "None": type(None), "Any": Any, "Literal": Literal}  # + "Enum": _EnumTypes, below


class TrainingField:
    """What the config layer reads of a dataclass field: name, type, default (the dataclass API's names)."""

    init = True

    def __init__(self, name: str, tp: Any, default: Any = MISSING, default_factory: Any = MISSING,
                 help: str = "") -> None:
        self.name, self.type, self.default, self.default_factory = name, tp, default, default_factory
        self.metadata = {"help": help}


class _EnumTypes:
    """`Enum['SchedulerType', ('linear', 'cosine')]` in the snapshot -> an Enum with those values (the type
    checker lists them in its messages and accepts only them, as for transformers' own enums)."""

    @staticmethod
    @lru_cache(maxsize=None)
    def __class_getitem__(key: tuple[str, tuple]) -> type:
        name, values = key
        return enum.Enum(name, [(f"v{i}", value) for i, value in enumerate(values)])


def type_text(tp: Any) -> str:
    """A type as config-file text: `int | None`, `Literal['a', 'b']`, `list[str]`, `Enum['Name', (values)]`."""
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"Enum[{tp.__name__!r}, {tuple(member.value for member in tp)!r}]"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(type_text(a) for a in args))
        return " | ".join(parts)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]" if args else origin.__name__
    if tp in (str, int, float, bool, dict, list, tuple):
        return tp.__name__
    return "Any"


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    json.dumps(value)  # raises for what a config file cannot hold
    return value


def live_snapshot() -> dict[str, dict[str, Any]]:
    """The snapshot as the installed transformers gives it (imports transformers)."""
    from tuneforge.config.training_args import TrainingArguments

    out: dict[str, dict[str, Any]] = {}
    for f in fields(TrainingArguments):
        if not f.init:
            continue
        entry: dict[str, Any] = {"type": type_text(f.type), "help": f.metadata.get("help", "")}
        try:
            if f.default is not MISSING:
                entry["default"] = _json_default(f.default)
            elif f.default_factory is not MISSING:
                entry["factory"] = _json_default(f.default_factory())
        except (TypeError, ValueError):
            entry["type"], entry["default"] = "Any", None  # an object default no config file can write
        out[f.name] = entry
    return out


@lru_cache(maxsize=1)
def training_fields() -> tuple[TrainingField, ...]:
    """The training keys from the snapshot, as dataclass-field-like objects (no transformers import)."""
    data = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["fields"]
    result = []
    for name, entry in data.items():
        tp = eval(entry["type"], {"__builtins__": {}}, {**_NAMES, "Enum": _EnumTypes})  # noqa: S307 - our own file
        if "factory" in entry:
            value = entry["factory"]
            result.append(TrainingField(name, tp, default_factory=lambda v=value: json.loads(json.dumps(v)),
                                        help=entry["help"]))
        else:
            result.append(TrainingField(name, tp, entry.get("default"), help=entry["help"]))
    return tuple(result)


def write_snapshot() -> None:
    import transformers

    SNAPSHOT.write_text(json.dumps({"transformers": transformers.__version__, "fields": live_snapshot()},
                                   indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_snapshot()
        print(f"wrote {SNAPSHOT}")
