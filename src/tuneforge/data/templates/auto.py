"""``template: auto``: the tokenizer's own Jinja chat template, split into turns by rendering prefixes.

For a conversation ``u1 a1 u2 a2 ...`` the prompt of turn k is what ``render(messages[:2k+1],
add_generation_prompt=True)`` adds to the previous rendering, and the response is what
``render(messages[:2k+2])`` adds to that. This only works when every longer rendering starts with
the shorter one (the template is *prefix-stable*); otherwise a clear error names a built-in template.
Each piece of text is tokenized on its own with ``add_special_tokens=False``, like built-in slots.
"""

from __future__ import annotations

import json
from typing import Any

from tuneforge.data.templates.model import (
    ASSISTANT,
    FUNCTION,
    OBSERVATION,
    Template,
    TemplateError,
    check_alternation,
    normalize_messages,
)
from tuneforge.data.templates.tools import load_calls
from tuneforge.errors import DataError

# (marker in the chat template or vocabulary, built-in template, a note); the first match wins.
_BUILTIN_HINTS = (
    ("<|im_sep|>", "phi4", ""),
    ("<think>", "qwen3", " (or `qwen3_nothink` for a model that does not think)"),
    ("<|im_start|>", "chatml", " (or `qwen` for Qwen models)"),
    ("<|start_header_id|>", "llama3", ""),
    ("<start_of_turn>", "gemma", ""),
    ("[gMASK]", "glm4", ""),
    ("<｜User｜>", "deepseek3", ""),
    ("[INST]", "llama2", " (or `mistral` for Mistral models)"),
    ("<|user|>", "zephyr", ""),
)
_PROBE_USER, _PROBE_ASSISTANT, _PROBE_SYSTEM = "PROBE_USER_TEXT", "PROBE_ASSISTANT_TEXT", "PROBE_SYSTEM_TEXT"


def suggest_builtin(tokenizer: Any) -> tuple[str, str]:
    """``(name, note)``: a built-in template that likely matches this tokenizer, from its special tokens."""
    haystack = (getattr(tokenizer, "chat_template", None) or "") + " ".join(tokenizer.get_added_vocab())
    for marker, name, note in _BUILTIN_HINTS:
        if marker in haystack:
            return name, note
    return "default", ""


# Conversations on which the direct renderer must give the library's text before it is used.
_DIRECT_PROBES = tuple(
    (messages, add_generation_prompt)
    for messages in (
        [{"role": "user", "content": " Hi\n there "}, {"role": "assistant", "content": "Hello!\n\n"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2？"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "再来"}],
    )
    for add_generation_prompt in (False, True)
)


def _plain_messages(messages: list[dict]) -> bool:
    """Only role and text content: what the library's preparation of messages leaves unchanged."""
    return all(len(m) == 2 and type(m.get("role")) is str and type(m.get("content")) is str for m in messages)


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _to_hf_message(role: str, content: str) -> dict[str, Any]:
    if role == OBSERVATION:
        return {"role": "tool", "content": content}
    if role == FUNCTION:  # a tool call: HF templates read message.tool_calls
        calls = load_calls(content)
        return {"role": ASSISTANT, "content": "", "tool_calls": [{"type": "function", "function": c} for c in calls]}
    return {"role": role, "content": content}


class JinjaTemplate:
    """Same interface as :class:`~tuneforge.data.templates.model.Template`, backed by ``apply_chat_template``."""

    efficient_eos = False
    replace_eos = False
    reasoning = False

    def __init__(self, tokenizer: Any, *, default_system: str | None = None, enable_thinking: bool | None = True):
        chat_template = getattr(tokenizer, "chat_template", None)
        if not isinstance(chat_template, str) or not chat_template:
            raise TemplateError(
                f"`template: auto` uses the tokenizer's chat template, but {_tokenizer_name(tokenizer)!r} has none; "
                f"set `template:` to a built-in name, e.g. `template: {suggest_builtin(tokenizer)[0]}` "
                "or `template: default`"
            )
        self.name = "auto"
        self._direct = None  # (tokenizer, its direct renderer or None), see _direct_renderer
        self._tokenizer = tokenizer
        self._chat_template = chat_template
        self._system_override = default_system
        self._extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        self.enable_thinking = enable_thinking
        self.default_system = default_system if default_system is not None else self._detect_default_system()
        turn_end = self._detect_turn_end()
        words = [w for w in (turn_end, tokenizer.eos_token) if w]
        self.stop_words: tuple[str, ...] = tuple(dict.fromkeys(words))

    # ---------------------------------------------------------------- rendering
    def _render(self, tokenizer: Any, hf_messages: list[dict], tools: list | None, add_generation_prompt: bool) -> str:
        direct = self._direct_renderer(tokenizer) if tools is None and _plain_messages(hf_messages) else None
        if direct is not None:
            try:
                return direct(hf_messages, add_generation_prompt)
            except Exception:  # noqa: BLE001 - the library call below raises it again, and its message is reported
                pass
        try:
            return tokenizer.apply_chat_template(
                hf_messages, tools=tools, chat_template=self._chat_template, tokenize=False,
                add_generation_prompt=add_generation_prompt, **self._extra,
            )  # fmt: skip
        except Exception as e:  # jinja raises its own errors (e.g. "roles must alternate")
            raise DataError(
                f"the tokenizer's chat template failed on this conversation: {type(e).__name__}: {e}"
            ) from None

    def _direct_renderer(self, tokenizer: Any):
        """`render(messages, add_generation_prompt)`: the compiled template called as `apply_chat_template` calls it,
        without its per-call preparation (which leaves plain role/content messages as they are): half the time of a
        render. Checked against the library on probe conversations first; None (the library for every row) when
        they differ or the library's compiler is not where it was."""
        if self._direct is not None and self._direct[0] is tokenizer:
            return self._direct[1]
        render = None
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            compiled = _compile_jinja_template(self._chat_template)
            variables = {**tokenizer.special_tokens_map, **self._extra}  # what apply_chat_template passes

            def render(messages: list[dict], add_generation_prompt: bool) -> str:
                return compiled.render(messages=messages, tools=None, documents=None,
                                       add_generation_prompt=add_generation_prompt, **variables)

            for messages, add_generation_prompt in _DIRECT_PROBES:
                library = tokenizer.apply_chat_template(messages, chat_template=self._chat_template, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt, **self._extra)
                if render(messages, add_generation_prompt) != library:
                    render = None
                    break
        except Exception:  # noqa: BLE001 - anything unexpected: the library's own call, always
            render = None
        self._direct = (tokenizer, render)
        return render

    def __getstate__(self) -> dict:
        """Pickled without the direct renderer (a closure; spawned worker processes make their own)."""
        return {**self.__dict__, "_direct": None}

    def _hf_messages(self, msgs, system: str | None) -> list[dict]:
        system = system or self._system_override
        head = [{"role": "system", "content": system}] if system else []
        return head + [_to_hf_message(r, c) for r, c in msgs]

    @staticmethod
    def _tools(tools: str | None) -> list | None:
        if not tools:
            return None
        try:
            parsed = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(f"the tools column is not valid JSON ({e}): {tools[:200]!r}") from None
        return parsed or None

    def _segments(self, tokenizer: Any, msgs, system, tools) -> list[str]:
        """One text segment per message: prompt pieces end with the generation prompt."""
        hf, tool_list = self._hf_messages(msgs, system), self._tools(tools)
        offset = len(hf) - len(msgs)  # the system message, if any
        segments, previous = [], ""
        for i in range(len(msgs)):
            is_prompt = i % 2 == 0
            text = self._render(tokenizer, hf[: offset + i + 1], tool_list, add_generation_prompt=is_prompt)
            if not text.startswith(previous):
                self._raise_not_prefix_stable(previous, text, i)
            segments.append(text[len(previous) :])
            previous = text
        return segments

    def _raise_not_prefix_stable(self, shorter: str, longer: str, index: int) -> None:
        at = next((k for k, (a, b) in enumerate(zip(shorter, longer)) if a != b), min(len(shorter), len(longer)))
        raise TemplateError(
            f"the chat template of {_tokenizer_name(self._tokenizer)!r} is not prefix-stable: adding message {index} "
            f"changes the text rendered before it (at character {at}: {shorter[at:at + 40]!r} became "
            f"{longer[at:at + 40]!r}), so prompts and responses cannot be split turn by turn. "
            "Set `template: {}`{} instead of `auto`.".format(*suggest_builtin(self._tokenizer))
        )

    # ---------------------------------------------------------------- the Template interface
    def encode_multiturn(self, tokenizer, messages, system=None, tools=None) -> list[tuple[list[int], list[int]]]:
        ids = [tokenizer.encode(piece[0], add_special_tokens=False) if piece else []
               for piece in self.multiturn_pieces(tokenizer, messages, system, tools)]
        return [(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)]

    def multiturn_pieces(self, tokenizer, messages, system=None, tools=None) -> list[list[str]]:
        """Per message, its rendered text segment (none when empty), still to tokenize."""
        msgs = normalize_messages(messages)
        check_alternation(msgs, ends_with_prompt=False)
        return [[segment] if segment else [] for segment in self._segments(tokenizer, msgs, system, tools)]

    def encode_oneturn(self, tokenizer, messages, system=None, tools=None) -> tuple[list[int], list[int]]:
        pairs = self.encode_multiturn(tokenizer, messages, system, tools)
        prompt = [t for p, r in pairs[:-1] for t in p + r] + pairs[-1][0]
        return prompt, pairs[-1][1]

    def encode_prompt(self, tokenizer, messages, system=None, tools=None) -> list[int]:
        msgs = normalize_messages(messages)
        check_alternation(msgs, ends_with_prompt=True)
        return [
            t
            for s in self._segments(tokenizer, msgs, system, tools)
            if s
            for t in tokenizer.encode(s, add_special_tokens=False)
        ]

    def render_text(
        self, messages, system=None, tools=None, *, bos_token=None, eos_token=None, add_generation_prompt=False
    ) -> str:
        """The tokenizer's own rendering (``bos_token``/``eos_token`` come from the tokenizer itself)."""
        msgs = normalize_messages(messages)
        return self._render(self._tokenizer, self._hf_messages(msgs, system), self._tools(tools), add_generation_prompt)

    def stop_token_ids(self, tokenizer) -> list[int]:
        return Template.stop_token_ids(self, tokenizer)  # type: ignore[arg-type]

    def fix_tokenizer(self, tokenizer) -> None:
        """The chat template decides the turn end, so eos stays; only a missing pad token is filled in."""
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token

    # ---------------------------------------------------------------- probing the template
    def _probe(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self._render(self._tokenizer, messages, None, add_generation_prompt)
        except DataError:
            return ""

    def _detect_default_system(self) -> str:
        """The system text the template inserts when none is given ("" if it inserts none)."""
        user = {"role": "user", "content": _PROBE_USER}
        with_system = self._probe([{"role": "system", "content": _PROBE_SYSTEM}, user])
        without = self._probe([user])
        if _PROBE_SYSTEM not in with_system:
            return ""
        before, after = with_system.split(_PROBE_SYSTEM, 1)
        if without.startswith(before) and without.endswith(after) and len(without) >= len(before) + len(after):
            return without[len(before) : len(without) - len(after)]
        return ""

    def _detect_turn_end(self) -> str | None:
        """The first special token the template writes after an assistant message (e.g. ``<|im_end|>``)."""
        text = self._probe(
            [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ASSISTANT}]
        )
        if _PROBE_ASSISTANT not in text:
            return None
        tail = text.split(_PROBE_ASSISTANT, 1)[1]
        specials = set(self._tokenizer.get_added_vocab()) | set(self._tokenizer.all_special_tokens)
        found = [(tail.find(tok), -len(tok), tok) for tok in specials if tok and tok in tail]
        return min(found)[2] if found else None


def check_template_matches(template: Template, tokenizer: Any) -> str | None:
    """Warning text when a named template renders differently from the tokenizer's own chat template."""
    if not isinstance(getattr(tokenizer, "chat_template", None), str) or isinstance(template, JinjaTemplate):
        return None
    eos = template.stop_words[0] if template.replace_eos and template.stop_words else tokenizer.eos_token
    turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    if not template.reasoning:  # LF adds an empty thought to every turn of reasoning templates; models do not
        turns = turns + [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}]
    for system in ("You are a test assistant.", None):
        ours = template.render_text(turns, system, bos_token=tokenizer.bos_token, eos_token=eos)
        head = [{"role": "system", "content": system}] if system else []
        try:
            theirs = tokenizer.apply_chat_template(head + turns, tokenize=False)
        except Exception as e:
            return f"the tokenizer's chat template could not render a probe conversation ({type(e).__name__}: {e})"
        if ours != theirs:
            at = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            start = max(0, at - 30)
            return (
                f"template '{template.name}' renders differently from the tokenizer's own chat template "
                f"({'with' if system else 'without'} a system prompt; first difference at character {at}):\n"
                f"  template '{template.name}': {ours[start:at + 50]!r}\n"
                f"  tokenizer chat template: {theirs[start:at + 50]!r}\n"
                "Training uses the named template; check that it is the one the model was trained with, "
                "or use `template: auto`."
            )
    return None
