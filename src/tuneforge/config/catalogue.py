"""The key catalogue: every accepted config key, its section, type and default (no transformers import)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from . import support
from .args import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments
from .batching_args import BatchingArguments
from .eval_args import EvaluationArguments
from .facts_args import FactArguments
from .grpo_args import GRPOArguments
from .lf_extra_args import LFExtraArguments
from .profiler_args import ProfilerArguments
from .typecheck import TypeMismatch, coerce

SECTIONS: tuple[tuple[str, type | None], ...] = (
    ("model", ModelArguments),
    ("data", DataArguments),
    ("finetuning", FinetuningArguments),
    ("generating", GeneratingArguments),
    ("training", None),  # HF's training arguments + LF's: read from training_fields.json (no transformers import)
    ("facts", FactArguments),
    ("grpo", GRPOArguments),
    ("batching", BatchingArguments),
    ("evaluation", EvaluationArguments),
    ("profiler", ProfilerArguments),
    ("lf_extras", LFExtraArguments),  # LF keys of features not built yet: always at their defaults
)


def section_fields(section: str, cls: type | None) -> tuple:
    """A section's fields: the dataclass's, or for `training` the snapshot's (config/training_fields.py)."""
    from .training_fields import training_fields

    return training_fields() if cls is None else fields(cls)


def key_catalogue() -> dict[str, list[tuple[str, Any]]]:
    """Every accepted key -> [(section, dataclass field)]; a key may belong to several sections."""
    catalogue: dict[str, list[tuple[str, Any]]] = {}
    for section, cls in SECTIONS:
        for f in section_fields(section, cls):
            if f.init and not f.metadata.get("derived"):  # derived: set by tuneforge, not a key
                catalogue.setdefault(f.name, []).append((section, f))
    return catalogue


def key_choices(key: str) -> tuple:
    """The values a choice key (a `Literal` field) accepts that tuneforge implements: what a front end may
    offer. () for a key refused altogether (support.UNSUPPORTED_KEYS)."""
    import typing

    if key in support.UNSUPPORTED_KEYS:
        return ()
    values = [v for v in typing.get_args(key_catalogue()[key][0][1].type) if v is not type(None)]
    values = [v for arg in values for v in (typing.get_args(arg) or (arg,))]  # Literal[...] | None
    accepted = support.UNSUPPORTED_VALUES.get(key, (values, ""))[0]
    return tuple(v for v in values if v in accepted)


def field_default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def all_known_keys() -> list[str]:
    return sorted(set(key_catalogue()) | set(support.LEGACY_TRAINING_KEYS))


def expected_type(key: str, catalogue: dict[str, list[tuple[str, Any]]]) -> Any:
    """The type a known key's value must have (a legacy key: the type of the key it stands for)."""
    if key in support.LEGACY_TRAINING_KEYS:
        legacy = support.LEGACY_TRAINING_KEYS[key]
        target = catalogue[legacy.target][0][1].type if legacy.target else None
        return target or (str | None if legacy.default is None else type(legacy.default))
    return catalogue[key][0][1].type


def flag_keys() -> list[str]:
    """The true/false keys: the only ones a bare `--key` (= true) may set."""
    catalogue = key_catalogue()
    flags = []
    for key in all_known_keys():
        try:
            if coerce(True, expected_type(key, catalogue)) is True:
                flags.append(key)
        except TypeMismatch:
            continue
    return flags
