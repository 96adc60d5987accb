"""The template model: a chat template is data (lists of slots), and this module interprets it.

A *slot list* is what one formatter produces: plain strings (``{{content}}`` is replaced by the
message text, ``{{idx}}`` by the turn number), :class:`TokenSlot` (one special token, inserted by id)
and :class:`SpecialSlot` (the tokenizer's bos / eos token, skipped when the tokenizer has none); the slot
types and their encoding live in templates/slots.py.

Semantics follow LLaMA-Factory's ``Template`` / ``Llama2Template`` / ``ReasoningTemplate``
(``src/llamafactory/data/template.py``): the prefix and the system prompt go in front of the first
message only; ``system or default_system`` is used; every string slot is tokenized on its own with
``add_special_tokens=False``. So ids and text here are byte-for-byte what LLaMA-Factory produces.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.data.templates.slots import (Slot, Slots, SpecialSlot, TokenSlot, fill_slots, slots_to_ids,  # noqa: F401
                                             slots_to_pieces, slots_to_text, token_id)
from tuneforge.data.templates.tools import format_function_calls, format_tool_prompt
from tuneforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

USER, ASSISTANT, SYSTEM, FUNCTION, OBSERVATION = "user", "assistant", "system", "function", "observation"
_PROMPT_ROLES = (USER, OBSERVATION)  # even positions
_RESPONSE_ROLES = (ASSISTANT, FUNCTION)  # odd positions


class TemplateError(ConfigError):
    """A template name, template definition or tokenizer chat template that cannot be used."""




def normalize_messages(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """Accept ``Message`` objects (``.role``/``.content``) or dicts; return ``(role, content)`` pairs."""
    out = []
    for i, msg in enumerate(messages):
        if isinstance(msg, dict):
            role, content = msg.get("role"), msg.get("content")
        else:
            role, content = getattr(msg, "role", None), getattr(msg, "content", None)
        if role not in _PROMPT_ROLES + _RESPONSE_ROLES:
            raise DataError(
                f"message {i} has role {role!r}; expected one of user, assistant, function, observation "
                "(a system prompt is passed separately as `system`)"
            )
        out.append((role, content or ""))
    return out


def check_alternation(msgs: Sequence[tuple[str, str]], *, ends_with_prompt: bool) -> None:
    """Prompt roles at even positions, response roles at odd ones; the length parity as asked."""
    for i, (role, _) in enumerate(msgs):
        expected = _PROMPT_ROLES if i % 2 == 0 else _RESPONSE_ROLES
        if role not in expected:
            raise DataError(f"message {i} has role {role!r}; expected {' or '.join(expected)} at this position")
    if not msgs or (len(msgs) % 2 == 1) != ends_with_prompt:
        want = "end with a user/observation message" if ends_with_prompt else "end with an assistant/function message"
        raise DataError(f"the conversation has {len(msgs)} messages; it must be non-empty and {want}")


@dataclass(frozen=True)
class Template:
    """A built-in chat template (read-only). See ``builtin.json`` for the data behind each one."""

    name: str
    format_user: Slots
    format_assistant: Slots
    format_system: Slots
    format_function: Slots
    format_observation: Slots
    format_prefix: Slots = ()
    format_tools: Slots = ()  # phi4_mini: the tools JSON goes into these slots as-is (else `tool_format` renders it)
    tool_format: str = "default"
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    efficient_eos: bool = False  # eos is not in the assistant slots; the encoder appends it once at the end
    replace_eos: bool = False  # fix_tokenizer makes stop_words[0] the eos token
    system_in_first_user: bool = False  # llama2 / gemma / mistral style: system text is fused into turn 1
    reasoning: bool = False  # qwen3 style: empty thought added to responses without one
    empty_thought_text: str | None = None  # glm4_7 style: the empty thought is this (default: both thought words)
    enable_thinking: bool | None = True
    preserve_thinking: bool = False  # LF's `preserve_thinking`: encode_oneturn keeps the thoughts of history turns

    # ---------------------------------------------------------------- elements (slots) per message
    def _message_slots(
        self, msgs: Sequence[tuple[str, str]], system: str | None, tools: str | None
    ) -> list[list[Slot]]:
        system = system or self.default_system
        result = []
        for i, (role, content) in enumerate(msgs):
            slots: list[Slot] = []
            system_text = ""
            if i == 0:
                slots += self.format_prefix
                if system or tools:
                    tool_text = self._tool_text(tools) if tools else ""
                    filled = fill_slots(self.format_system, content=system + tool_text)
                    if self.system_in_first_user:
                        system_text = filled[0]  # a single string slot (checked when the template is built)
                    else:
                        slots += filled
            if role == USER:
                if self.system_in_first_user:
                    slots += fill_slots(self.format_user, content=system_text + content)
                else:
                    slots += fill_slots(self.format_user, content=content, idx=str(i // 2))
            elif role == ASSISTANT:
                slots += fill_slots(self.format_assistant, content=content)
            elif role == OBSERVATION:
                slots += fill_slots(self.format_observation, content=content)
            else:  # FUNCTION
                thought_words = None if self.system_in_first_user else self.thought_words
                calls = format_function_calls(self.tool_format, content, thought_words)
                slots += fill_slots(self.format_function, content=calls)
            result.append(slots)
        return result

    def _tool_text(self, tools: str) -> str:
        if self.format_tools:  # LF: a StringFormatter as format_tools; its first slot, tools JSON unparsed
            return str(fill_slots(self.format_tools, content=tools)[0])
        return format_tool_prompt(self.tool_format, tools)

    # ---------------------------------------------------------------- reasoning (thought) handling
    @property
    def empty_thought(self) -> str:
        if self.empty_thought_text is not None:
            return self.empty_thought_text
        return self.thought_words[0] + self.thought_words[1]

    def _remove_thought(self, content: str) -> str:
        start, end = (re.escape(w) for w in self.thought_words)
        return re.sub(f"{start}(.*?){end}", "", content, flags=re.DOTALL).lstrip("\n")

    def _has_thought(self, content: str) -> bool:
        return self.thought_words[0].strip() in content or self.thought_words[1].strip() in content

    def _multiturn_slots(self, msgs, system, tools, discarding_history_cot: bool = False) -> list[list[Slot]]:
        if self.reasoning and self.enable_thinking is False:  # drop every chain of thought
            msgs = [(r, self._remove_thought(c) if i % 2 else c) for i, (r, c) in enumerate(msgs)]
        discarding_history_cot = self.reasoning and discarding_history_cot
        if discarding_history_cot:  # history turns lose their thoughts; only the last turn gets an empty one
            msgs = [(r, self._remove_thought(c) if i % 2 and i < len(msgs) - 2 else c) for i, (r, c) in enumerate(msgs)]
        per_message = self._message_slots(msgs, system, tools)
        if self.reasoning:
            for i in [len(msgs) - 2] if discarding_history_cot else range(0, len(msgs) - 1, 2):
                if not self._has_thought(msgs[i + 1][1]):
                    if not self.enable_thinking:  # empty thought is part of the prompt (no loss)
                        per_message[i].append(self.empty_thought)
                    else:  # the model learns to emit the empty thought
                        per_message[i + 1].insert(0, self.empty_thought)
        return per_message

    def _oneturn_slots(self, msgs, system, tools) -> tuple[list[Slot], list[Slot]]:
        if self.reasoning:  # history turns never keep their thoughts; the last one only if thinking
            last = len(msgs) - 1

            def drop(i: int) -> bool:
                history = i % 2 == 1 and i < last - 1 and not self.preserve_thinking
                return history or (i == last and self.enable_thinking is False)

            msgs = [(r, self._remove_thought(c) if drop(i) else c) for i, (r, c) in enumerate(msgs)]
        per_message = self._message_slots(msgs, system, tools)
        prompt = [slot for slots in per_message[:-1] for slot in slots]
        response = per_message[-1]
        if self.reasoning and not self._has_thought(msgs[-1][1]):
            if not self.enable_thinking:
                prompt.append(self.empty_thought)
            else:
                response.insert(0, self.empty_thought)
        return prompt, response

    # ---------------------------------------------------------------- public interface
    def encode_multiturn(
        self, tokenizer, messages, system=None, tools=None, discarding_history_cot: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        """One ``(prompt_ids, response_ids)`` pair per turn. With ``efficient_eos`` the eos is *not* in the
        response ids: LLaMA-Factory's encoders append one eos after the last response instead.

        ``discarding_history_cot`` (reasoning templates only; LF passes ``mask_history and not
        preserve_thinking``): thoughts of history turns are removed and only the last turn gets an empty one."""
        ids = [slots_to_ids(tokenizer, slots) for slots in self._checked_multiturn_slots(messages, system, tools,
                                                                                      discarding_history_cot)]
        return [(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)]

    def multiturn_pieces(self, tokenizer, messages, system=None, tools=None,
                         discarding_history_cot: bool = False) -> list[list[str | int]]:
        """`encode_multiturn` before tokenization: per message, its texts and token ids (`slots_to_pieces`)."""
        return [slots_to_pieces(tokenizer, slots)
                for slots in self._checked_multiturn_slots(messages, system, tools, discarding_history_cot)]

    def _checked_multiturn_slots(self, messages, system, tools, discarding_history_cot: bool = False):
        msgs = normalize_messages(messages)
        check_alternation(msgs, ends_with_prompt=False)
        return self._multiturn_slots(msgs, system, tools, discarding_history_cot)

    def encode_oneturn(self, tokenizer, messages, system=None, tools=None) -> tuple[list[int], list[int]]:
        """Everything before the last message is the prompt; the last message is the response."""
        msgs = normalize_messages(messages)
        check_alternation(msgs, ends_with_prompt=False)
        prompt, response = self._oneturn_slots(msgs, system, tools)
        return slots_to_ids(tokenizer, prompt), slots_to_ids(tokenizer, response)

    def encode_prompt(self, tokenizer, messages, system=None, tools=None) -> list[int]:
        """Generation prompt for messages ending with a user turn (assistant prefix included)."""
        msgs = normalize_messages(messages)
        check_alternation(msgs, ends_with_prompt=True)
        prompt, _ = self._oneturn_slots(msgs + [(ASSISTANT, "")], system, tools)
        return slots_to_ids(tokenizer, prompt)

    def render_text(
        self, messages, system=None, tools=None, *, bos_token, eos_token, add_generation_prompt=False
    ) -> str:
        """The exact text the slots produce (what the ids decode to)."""
        msgs = normalize_messages(messages)
        if add_generation_prompt:
            check_alternation(msgs, ends_with_prompt=True)
            slots, _ = self._oneturn_slots(msgs + [(ASSISTANT, "")], system, tools)
        else:
            slots = [slot for per in self._multiturn_slots(msgs, system, tools) for slot in per]
        return slots_to_text(slots, bos_token, eos_token)

    def stop_token_ids(self, tokenizer) -> list[int]:
        """eos plus every stop word the tokenizer knows, without duplicates (for generation)."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for word in self.stop_words:
            tid = tokenizer.convert_tokens_to_ids(word)
            if (
                tid is not None
                and not (tid == tokenizer.unk_token_id and word != tokenizer.unk_token)
                and tid not in ids
            ):
                ids.append(tid)
        return ids

    def fix_tokenizer(self, tokenizer) -> None:
        """LF's ``fix_special_tokens``: eos := first stop word when ``replace_eos``, eos/pad must exist,
        other stop words become special tokens. New tokens need ``resize_vocab`` (a warning says so)."""
        stop_words = list(self.stop_words)
        if self.replace_eos:
            if not stop_words:
                raise TemplateError(f"template '{self.name}' sets replace_eos but has no stop words")
            _set_eos(tokenizer, stop_words.pop(0))
        if tokenizer.eos_token_id is None:
            _set_eos(tokenizer, "<|endoftext|>")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
            logger.info("pad token set to the eos token %s", tokenizer.eos_token)
        if stop_words:
            added = tokenizer.add_special_tokens(
                {"additional_special_tokens": stop_words}, replace_extra_special_tokens=False
            )
            if added:
                logger.warning(
                    "template '%s' added %d stop-word token(s) %s: the embeddings need resizing",
                    self.name,
                    added,
                    stop_words,
                )


def _set_eos(tokenizer, eos_token: str) -> None:
    if tokenizer.eos_token == eos_token:
        return
    added = tokenizer.add_special_tokens({"eos_token": eos_token})
    logger.info("eos token set to %s", eos_token)
    if added:
        logger.warning("eos token %s was added to the vocabulary: the embeddings need resizing", eos_token)


# -------------------------------------------------------------------- building templates from data
_SLOT_KEYS = (
    "format_user",
    "format_assistant",
    "format_system",
    "format_function",
    "format_observation",
    "format_prefix",
    "format_tools",
)
_SCALAR_KEYS = {
    "base": str, "tool_format": str, "default_system": str, "stop_words": list, "thought_words": list,
    "efficient_eos": bool, "replace_eos": bool, "system_in_first_user": bool, "reasoning": bool,
    "empty_thought": str, "comment": str,
}  # fmt: skip
_PLACEHOLDER = re.compile(r"\{\{[a-zA-Z_][a-zA-Z0-9_]*\}\}")


def _parse_slots(name: str, key: str, raw: Any) -> Slots:
    if not isinstance(raw, list):
        raise TemplateError(f"template '{name}': {key} must be a list of slots, found {raw!r}")
    slots: list[Slot] = []
    for item in raw:
        if isinstance(item, str):
            slots.append(item)
        elif isinstance(item, dict) and set(item) == {"token"} and isinstance(item["token"], str):
            slots.append(TokenSlot(item["token"]))
        elif isinstance(item, dict) and set(item) == {"special"} and item["special"] in ("bos_token", "eos_token"):
            slots.append(SpecialSlot(item["special"]))
        else:
            raise TemplateError(
                f"template '{name}': {key} has slot {item!r}; expected a string, "
                '{"token": "<tok>"} or {"special": "bos_token" | "eos_token"}'
            )
    has_placeholder = any(isinstance(s, str) and _PLACEHOLDER.search(s) for s in slots)
    if key == "format_prefix" and has_placeholder:
        raise TemplateError(f"template '{name}': format_prefix must not contain a placeholder: {raw!r}")
    if key != "format_prefix" and not has_placeholder:
        raise TemplateError(f"template '{name}': {key} needs a {{{{content}}}} placeholder: {raw!r}")
    return tuple(slots)


def template_from_dict(name: str, raw: dict[str, Any]) -> Template:
    """Resolve one (already base-merged) data entry, with LLaMA-Factory's ``register_template`` defaults."""
    unknown = set(raw) - set(_SLOT_KEYS) - set(_SCALAR_KEYS)
    if unknown:
        raise TemplateError(f"template '{name}': unknown keys {sorted(unknown)}")
    for key, kind in _SCALAR_KEYS.items():
        if key in raw and not isinstance(raw[key], kind):
            raise TemplateError(f"template '{name}': {key} must be a {kind.__name__}, found {raw[key]!r}")
    efficient_eos = raw.get("efficient_eos", False)
    default_slots: list = ["{{content}}"] if efficient_eos else ["{{content}}", {"special": "eos_token"}]
    user = raw.get("format_user", ["{{content}}"])
    assistant = raw.get("format_assistant", default_slots)
    slots = {
        "format_user": user,
        "format_assistant": assistant,
        "format_system": raw.get("format_system", ["{{content}}"]),
        "format_function": raw.get("format_function", assistant),
        "format_observation": raw.get("format_observation", user),
    }
    parsed = {key: _parse_slots(name, key, value) for key, value in slots.items()}
    parsed["format_prefix"] = _parse_slots(name, "format_prefix", raw.get("format_prefix", []))
    if "format_tools" in raw:
        parsed["format_tools"] = _parse_slots(name, "format_tools", raw["format_tools"])
        if not isinstance(parsed["format_tools"][0], str):
            raise TemplateError(f"template '{name}': format_tools must start with a string slot")
    system_in_first_user = raw.get("system_in_first_user", False)
    if system_in_first_user and not isinstance(parsed["format_system"][0], str):
        raise TemplateError(f"template '{name}': with system_in_first_user, format_system must start with a string")
    thought_words = tuple(raw.get("thought_words", ("<think>\n", "\n</think>\n\n")))
    if len(thought_words) != 2:
        raise TemplateError(f"template '{name}': thought_words must be [start, end], found {thought_words!r}")
    return Template(
        name=name,
        **parsed,
        tool_format=raw.get("tool_format", "default"),
        default_system=raw.get("default_system", ""),
        stop_words=tuple(raw.get("stop_words", ())),
        thought_words=thought_words,  # type: ignore[arg-type]
        efficient_eos=efficient_eos,
        replace_eos=raw.get("replace_eos", False),
        system_in_first_user=system_in_first_user,
        reasoning=raw.get("reasoning", False),
        empty_thought_text=raw.get("empty_thought"),
    )
