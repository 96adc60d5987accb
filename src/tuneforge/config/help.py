"""`tuneforge train -h`: every accepted key, grouped by section, with its default and one line of help."""

from __future__ import annotations

import enum

from . import support
from .catalogue import SECTIONS, field_default, section_fields

_TITLES = {
    "model": "model",
    "data": "data",
    "finetuning": "finetuning",
    "generating": "generating",
    "training": "training (HF Seq2SeqTrainingArguments + LLaMA-Factory additions)",
    "facts": "fact data (tuneforge additions: augmentation, train until learned)",
    "batching": "micro-batches (LLaMA-Factory v1's batching_strategy)",
    "grpo": "stage grpo (TRL 1.x GRPOConfig names: completions per prompt, rewards, clipping, KL)",
    "evaluation": "multiple-choice evaluation (`tuneforge eval x.yaml`: MMLU / C-Eval / CMMLU layout)",
    "profiler": "torch profiler traces of training steps (LLaMA-Factory's ProfilerArguments)",
    "lf_extras": "LLaMA-Factory keys of features tuneforge does not have yet",
}


def _show_default(value: object) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def _one_line(text: str, limit: int = 100) -> str:
    """First sentence of a (possibly long, multi-line HF) help string, cut to `limit` characters."""
    text = " ".join(text.split())
    for end in (". ", "; "):
        if end in text:
            text = text.split(end, 1)[0] + "."
            break
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _note(name: str) -> str:
    if name in support.UNSUPPORTED_KEYS:
        return " [not supported yet]"
    if name in support.UNSUPPORTED_VALUES:
        accepted, _ = support.UNSUPPORTED_VALUES[name]
        return f" [supported: {', '.join(map(str, accepted))}]"
    if support.only_with(name):
        return f" [only with {support.only_with(name)}]"
    if name == "stage":
        return f" [supported: {', '.join(support.supported_stages())}]"
    return ""


def _row(name: str, default: object, help_text: str, *, shorten: bool = True) -> str:
    text = _one_line(help_text) if shorten else help_text
    return f"  {name:<38} {_show_default(default):<18} {text}{_note(name)}"


def format_key_help() -> str:
    """All accepted keys as aligned text: `  name   default   help [support note]`, one section after another."""
    lines = [
        "Config keys (YAML/JSON file, `key=value` or `--key value` overrides). Same names and defaults as",
        "LLaMA-Factory; keys marked [not supported yet] are accepted only at their default value.",
    ]
    for section, cls in SECTIONS:
        lines += ["", f"{_TITLES[section]}:", f"  {'key':<38} {'default':<18} help"]
        for f in section_fields(section, cls):
            if f.init and not f.metadata.get("derived"):  # derived fields are not keys
                # our own help strings are already one line; HF's are paragraphs
                help_text = f.metadata.get("help", "")
                lines.append(_row(f.name, field_default(f), help_text, shorten=section == "training"))
    lines += ["", "training keys from transformers 4 (translated):"]
    for name, legacy in support.LEGACY_TRAINING_KEYS.items():
        what = f"alias of {legacy.target}" if legacy.action == "alias" else legacy.help
        if legacy.reason:
            what += f" ({legacy.reason})"
        lines.append(_row(name, legacy.default, what, shorten=False))
    return "\n".join(lines) + "\n"
