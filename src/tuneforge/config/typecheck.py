"""Check a config value against a dataclass field's type and convert the harmless mismatches.

Accepted conversions (YAML and the command line produce these): `"true"`/`"false"` for a bool,
numeric strings for int/float (PyYAML reads `1e-4` as a string), integral floats for an int,
ints for a float, lists for tuples. Everything else must match the annotation.
"""

from __future__ import annotations

import enum
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

_INT_RE = re.compile(r"^[+-]?\d+$")


class TypeMismatch(Exception):
    """The value does not fit the type."""


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def describe_type(tp: Any) -> str:
    """Human wording for a type annotation: 'an integer', 'true or false', 'one of: a, b'."""
    if tp is Any or tp is object:
        return "any value"
    if tp is type(None):
        return "null"
    if _is_union(tp):
        arms = get_args(tp)
        if any(isinstance(arm, type) and issubclass(arm, enum.Enum) for arm in arms):
            arms = tuple(arm for arm in arms if arm is not str)  # `SchedulerType | str` means the enum values
        parts = [describe_type(arm) for arm in arms]
        return " or ".join(dict.fromkeys(parts))
    origin = get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(str(v) for v in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of: " + ", ".join(str(member.value) for member in tp)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to fit `tp`, or raise TypeMismatch."""
    try:
        return _coerce(value, tp, strict=True)
    except TypeMismatch:
        return _coerce(value, tp, strict=False)


def _coerce(value: Any, tp: Any, *, strict: bool) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise TypeMismatch("")
    if isinstance(tp, str):  # an unresolved forward reference: trust the consumer to check
        return value
    if _is_union(tp):
        return _coerce_union(value, get_args(tp), strict=strict)
    origin = get_origin(tp)
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in get_args(tp)):
            return value
        if not strict and _is_yaml_no(value, get_args(tp)):
            return "no"
        raise TypeMismatch("")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch("")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [_coerce_item(item, item_tp, strict=strict) for item in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise TypeMismatch("")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [member.value for member in tp]
        if isinstance(value, tp) or value in choices:
            return value
        if not strict and _is_yaml_no(value, choices):
            return "no"
        raise TypeMismatch("")
    if tp is bool:
        return _coerce_bool(value, strict=strict)
    if tp is int:
        return _coerce_int(value, strict=strict)
    if tp is float:
        return _coerce_float(value, strict=strict)
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch("")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return value
        raise TypeMismatch("")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise TypeMismatch("")
    return value  # an annotation we cannot check (typing constructs); the consumer validates


def _coerce_item(item: Any, tp: Any, *, strict: bool) -> Any:
    try:
        return _coerce(item, tp, strict=True)
    except TypeMismatch:
        if strict:
            raise
        return _coerce(item, tp, strict=False)


def _coerce_union(value: Any, arms: tuple[Any, ...], *, strict: bool) -> Any:
    if value is None:
        if type(None) in arms:
            return None
        raise TypeMismatch("")
    # A union with an enum arm (`SchedulerType | str`): the string must still be one of the enum values.
    enums = [arm for arm in arms if isinstance(arm, type) and issubclass(arm, enum.Enum)]
    if enums and isinstance(value, str):
        for enum_tp in enums:
            if value in [member.value for member in enum_tp]:
                return value
        raise TypeMismatch("")
    for arm in arms:
        try:
            return _coerce(value, arm, strict=strict)
        except TypeMismatch:
            continue
    raise TypeMismatch("")


def _is_yaml_no(value: Any, choices) -> bool:
    """YAML 1.1 reads a bare `no` / `off` as false: `save_strategy: no` means the choice "no"."""
    return value is False and "no" in choices


def _coerce_bool(value: Any, *, strict: bool) -> bool:
    if isinstance(value, bool):
        return value
    if not strict and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeMismatch("")


def _coerce_int(value: Any, *, strict: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not strict:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_RE.match(value.strip()):
            return int(value.strip())
    raise TypeMismatch("")


def _coerce_float(value: Any, *, strict: bool) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not strict and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise TypeMismatch("")

