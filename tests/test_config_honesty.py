"""No key accepted that is not honoured: every field of the config dataclasses is read by code outside
config/, or refused when set (support.UNSUPPORTED_KEYS), or allowed only at the values tuneforge
implements (support.UNSUPPORTED_VALUES), or only matters with a refused feature (support.ONLY_WITH)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tuneforge.config import support
from tuneforge.config.args import (DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments,
                                   TrainingArguments)
from tuneforge.config.batching_args import BatchingArguments
from tuneforge.config.facts_args import FactArguments
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import NotSupportedError

SRC = Path(__file__).resolve().parent.parent / "src" / "tuneforge"
LF_SECTIONS = (ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments, FactArguments,
               BatchingArguments)


def _code_outside_config() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py") if "config" not in p.relative_to(SRC).parts)


def _own_fields(cls) -> list[str]:
    """Fields a class declares itself (TrainingArguments: only tuneforge's / LF's additions to HF's)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in inherited]


def _read(name: str, code: str) -> bool:
    return re.search(rf"\.{name}\b|[\"']{name}[\"']", code) is not None


def test_every_key_is_read_or_refused():
    code = _code_outside_config()
    silent = []
    for cls in (*LF_SECTIONS, TrainingArguments):
        for name in _own_fields(cls):
            if name in support.UNSUPPORTED_KEYS or name in support.UNSUPPORTED_VALUES or support.only_with(name):
                continue
            if not _read(name, code):
                silent.append(f"{cls.__name__}.{name}")
    assert silent == [], ("accepted but read nowhere outside config/ (implement it, or refuse it in "
                          f"config/support.py): {', '.join(silent)}")


def test_keys_that_only_matter_with_a_feature_point_at_a_refused_feature():
    for prefix, feature in support.ONLY_WITH.items():
        key, _, value = feature.partition(": ")
        if key == "column":  # a dataset column the data layer refuses
            from tuneforge.data.registry import UNSUPPORTED_COLUMNS

            refused = value in UNSUPPORTED_COLUMNS
        elif value:
            accepted = support.UNSUPPORTED_VALUES.get(key, (None,))[0]
            refused = value not in accepted if accepted is not None else value in support.UNSUPPORTED_FINETUNING_TYPES
        else:
            refused = key in support.UNSUPPORTED_KEYS
        assert refused, f"{prefix}: its feature `{feature}` is not refused, so the key must be read"


@pytest.mark.parametrize("key, value", [
    ("use_mca", True), ("crop_to_patches", True), ("reasoning_effort", "high"),
    ("low_cpu_mem_usage", False), ("use_kv_cache", False), ("infer_backend", "vllm"),
])
def test_refused_keys_are_refused_when_set(key, value):
    with pytest.raises(NotSupportedError):
        load_config_dict({"model_name_or_path": "m", "dataset": "d", "output_dir": "o", key: value})


def test_the_scan_finds_an_unread_key(monkeypatch):
    """The guard itself: a new field nobody reads is reported."""
    @dataclasses.dataclass(frozen=True)
    class WithNewKey(DataArguments):
        brand_new_key_nobody_reads: bool = False

    assert "brand_new_key_nobody_reads" in _own_fields(WithNewKey)
    assert not _read("brand_new_key_nobody_reads", _code_outside_config())


def test_the_web_ui_offers_only_what_validation_accepts():
    pytest.importorskip("gradio")  # the web UI's own extra, not a tuneforge module
    from tuneforge.webui import args

    base = {"model_name_or_path": "m", "dataset": "d", "output_dir": "o"}
    offered = [("stage", s) for s in args.STAGES] + [("finetuning_type", f) for f in args.FINETUNING_TYPES]
    offered += [("pref_loss", p) for p in args.PREF_LOSSES] + [("rope_scaling", r) for r in args.ROPE_SCALINGS[1:]]
    for key, value in offered:
        extra = {"stage": "dpo"} if key == "pref_loss" else {}
        load_config_dict({**base, **extra, key: value})  # raises if the page offered a refused value
    for booster in args.BOOSTERS:
        model_keys = args.model_config({"model_path": "m", "booster": booster}, "saves")
        assert not set(model_keys) & set(support.UNSUPPORTED_KEYS), booster
    assert "unsloth" not in args.BOOSTERS  # refused in support.py
    assert "kto_pair" in args.PREF_LOSSES  # every LF pref_loss is implemented
