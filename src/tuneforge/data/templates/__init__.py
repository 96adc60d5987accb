"""Chat templates: built-ins as data (``builtin.json``) and ``auto`` (the tokenizer's Jinja template).

template = template_for(cfg.data, tokenizer)      # a run's template: template + its data keys
template = get_template("qwen", tokenizer)        # or None / "auto"
template.fix_tokenizer(tokenizer)                  # eos / pad / stop words, once per run
pairs = template.encode_multiturn(tokenizer, conv.messages, conv.system, conv.tools)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Union

from tuneforge.config.args import DataArguments
from tuneforge.data.templates.auto import JinjaTemplate, check_template_matches, suggest_builtin
from tuneforge.data.templates.model import SpecialSlot, Template, TemplateError, template_from_dict
from tuneforge.data.templates.tools import check_tool_format
from tuneforge.errors import NotSupportedError

__all__ = [
    "ChatTemplate", "JinjaTemplate", "Template", "TemplateError", "available_templates",
    "check_template_matches", "get_template", "suggest_builtin", "template_for",
]  # fmt: skip

ChatTemplate = Union[Template, JinjaTemplate]
_BUILTIN_FILE = Path(__file__).with_name("builtin.json")


@lru_cache(maxsize=1)
def _load_builtin() -> tuple[Mapping[str, Template], frozenset[str]]:
    """Read ``builtin.json`` once; entries with ``base`` copy another entry and override its keys."""
    data = json.loads(_BUILTIN_FILE.read_text(encoding="utf-8"))
    raw: dict[str, dict[str, Any]] = data["templates"]

    def merged(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if name in seen:
            raise TemplateError(f"{_BUILTIN_FILE}: template '{name}' inherits from itself via {' -> '.join(seen)}")
        entry = dict(raw[name])
        base = entry.pop("base", None)
        if base is None:
            return entry
        if base not in raw:
            raise TemplateError(f"{_BUILTIN_FILE}: template '{name}' has unknown base '{base}'")
        return {**merged(base, seen + (name,)), **entry}

    templates = {name: template_from_dict(name, merged(name)) for name in raw}
    return MappingProxyType(templates), frozenset(data.get("llamafactory_templates_not_shipped", ()))


def available_templates() -> list[str]:
    """Names accepted by ``get_template`` (besides ``auto``)."""
    return sorted(_load_builtin()[0])


def get_template(
    name: str | None,
    tokenizer: Any,
    *,
    default_system: str | None = None,
    enable_thinking: bool | None = True,
    preserve_thinking: bool | None = None,
    tool_format: str | None = None,
) -> ChatTemplate:
    """The template a run uses. ``None``/``"auto"`` -> the tokenizer's own chat template.

    The keyword arguments are LLaMA-Factory's data arguments of the same names: ``default_system``
    replaces the template's default system prompt, ``enable_thinking`` and ``preserve_thinking`` (keep the
    thoughts of earlier turns; unset = LF's false) apply to reasoning templates, ``tool_format`` switches the tool /
    function-call format. The tokenizer is not modified here;
    call ``template.fix_tokenizer(tokenizer)`` once per run.
    """
    if name is None or name == "auto":
        if tool_format is not None:
            raise NotSupportedError(
                "`tool_format` cannot be combined with `template: auto` (the chat template formats tools)"
            )
        if preserve_thinking is not None:
            raise NotSupportedError(
                "`preserve_thinking` applies to LLaMA-Factory's reasoning templates (qwen3, deepseekr1, ...); with "
                "`template: auto` the model's own chat template decides whether earlier turns keep their thoughts"
            )
        return JinjaTemplate(tokenizer, default_system=default_system, enable_thinking=enable_thinking)

    templates, lf_only = _load_builtin()
    if name not in templates:
        if name in lf_only:
            raise NotSupportedError(
                f"template '{name}' (LLaMA-Factory) is not shipped by tuneforge yet; use `template: auto` "
                f"(the model's own chat template) or one of: {', '.join(available_templates())}"
            )
        close = difflib.get_close_matches(name, list(templates) + ["auto"], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise TemplateError(
            f"unknown template '{name}' (key `template`); {hint}available: auto, {', '.join(available_templates())}"
        )

    template = templates[name]
    changes: dict[str, Any] = {}
    if default_system is not None:
        changes["default_system"] = default_system
    if template.reasoning:
        changes["enable_thinking"] = enable_thinking
        changes["preserve_thinking"] = bool(preserve_thinking)
    elif preserve_thinking:  # LF ignores it there; accepted and doing nothing would hide a mistaken template
        raise NotSupportedError(f"`preserve_thinking` keeps the thoughts of earlier turns in reasoning templates; "
                                f"template '{name}' is not one, so the key would do nothing: remove it")
    if tool_format is not None:  # LF: function slots fall back to the plain assistant defaults
        check_tool_format(tool_format)
        changes["tool_format"] = tool_format
        changes["format_function"] = (
            ("{{content}}",) if template.efficient_eos else ("{{content}}", SpecialSlot("eos_token"))
        )
    return dataclasses.replace(template, **changes) if changes else template


def template_for(data_args: DataArguments, tokenizer: Any) -> ChatTemplate:
    """The run's template from its data arguments: `template` with `default_system`, `enable_thinking`,
    `preserve_thinking` and `tool_format` applied (LLaMA-Factory's `get_template_and_fix_tokenizer`). Every path
    that builds a run's template (training, chat, reward scoring, export, evaluation) goes through here, so none
    of these keys can be dropped."""
    return get_template(
        data_args.template,
        tokenizer,
        default_system=data_args.default_system,
        enable_thinking=data_args.enable_thinking,
        preserve_thinking=data_args.preserve_thinking,
        tool_format=data_args.tool_format,
    )
