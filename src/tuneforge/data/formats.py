"""Dataset rows (alpaca / sharegpt / openai) -> one canonical :class:`Conversation`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from tuneforge.errors import DataError

if TYPE_CHECKING:
    from tuneforge.data.registry import DatasetSpec

ROLES = ("user", "assistant", "system", "function", "observation")


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant" | "system" | "function" | "observation"
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]  # alternating: user/observation at even index, assistant/function at odd
    system: str = ""
    tools: str = ""
    chosen: Message | None = None  # ranking data: messages end with a user turn
    rejected: Message | None = None
    kto_tag: bool | None = None
    source: str = ""  # "data/foo.json row 12" for error messages and reports
    # the `images` column's paths as the row has them (None: the dataset has no such column); data/media.py
    # resolves them and expands each `<image>` of the text into the model's image tokens
    images: tuple[str, ...] | None = None


class RowError(DataError):
    """One dataset row that cannot be converted; the pipeline collects these into the report."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


def _text(value, what: str, source: str) -> str:
    """A message text: strings pass, None/missing becomes "", anything else is a RowError."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(source, f"{what} must be a string, found {type(value).__name__} {_short(value)}")
    return value


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tools(row: dict, column: str | None) -> str:
    tools = row.get(column) if column else None
    if tools is None:
        return ""
    return tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)


def _images(row: dict, column: str | None, source: str) -> tuple[str, ...] | None:
    """The `images` column: one path or a list of paths (LF also takes {"path": ...} objects)."""
    if not column:
        return None
    value = row.get(column)
    items = [] if value is None else value if isinstance(value, list) else [value]
    paths = []
    for i, item in enumerate(items):
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str) or not path:
            raise RowError(source, f"column '{column}' (images) item {i} must be an image file path, found "
                           f"{_short(item)} (images given as bytes are not supported yet)")
        paths.append(path)
    return tuple(paths)


def _kto_tag(row: dict, column: str | None, source: str) -> bool | None:
    if not column or row.get(column) is None:
        return None
    value = row[column]
    if not isinstance(value, bool):
        raise RowError(source, f"column '{column}' (kto_tag) must be true or false, found {_short(value)}")
    return value


def convert_alpaca(row: dict, spec: DatasetSpec, source: str) -> Conversation:
    """instruction (+ "\\n" + input) -> user, output -> assistant; history pairs become earlier turns."""
    cols = spec.columns
    if cols.prompt not in row and cols.query not in row:
        raise RowError(source, f"no column '{cols.prompt}' or '{cols.query}' (row has {_keys(row)})")
    messages: list[Message] = []
    history = row.get(cols.history) if cols.history else None
    if history is not None:
        if not isinstance(history, list):
            raise RowError(source, f"column '{cols.history}' (history) must be a list of [prompt, response] pairs")
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RowError(source, f"history[{i}] must be a [prompt, response] pair, found {_short(pair)}")
            messages.append(Message("user", _text(pair[0], f"history[{i}][0]", source)))
            messages.append(Message("assistant", _text(pair[1], f"history[{i}][1]", source)))
    parts = [_text(row.get(c), f"column '{c}'", source) for c in (cols.prompt, cols.query) if c]
    messages.append(Message("user", "\n".join(p for p in parts if p)))

    chosen = rejected = None
    if spec.ranking:
        chosen_value, rejected_value = row.get(cols.chosen or ""), row.get(cols.rejected or "")
        if not (isinstance(chosen_value, str) and isinstance(rejected_value, str)):
            raise RowError(
                source, f"ranking row needs string columns '{cols.chosen}' (chosen) and '{cols.rejected}' (rejected)"
            )
        chosen, rejected = Message("assistant", chosen_value), Message("assistant", rejected_value)
    elif cols.response and row.get(cols.response) is not None:
        messages.append(Message("assistant", _text(row[cols.response], f"column '{cols.response}'", source)))
    return _checked(Conversation(
        messages=tuple(messages),
        system=_text(row.get(cols.system) if cols.system else None, f"column '{cols.system}'", source),
        tools=_tools(row, cols.tools),
        chosen=chosen,
        rejected=rejected,
        kto_tag=_kto_tag(row, cols.kto_tag, source),
        source=source,
        images=_images(row, cols.images, source),
    ))


def _keys(row: dict) -> str:
    return "keys " + ", ".join(repr(k) for k in list(row)[:10]) if row else "no keys"


class _MessageReader:
    """Reads sharegpt/openai message objects with the spec's tags."""

    def __init__(self, spec: DatasetSpec, source: str):
        t = spec.tags
        self.tags, self.source = t, source
        self.roles = {
            t.user_tag: "user", t.assistant_tag: "assistant", t.observation_tag: "observation",
            t.function_tag: "function", t.system_tag: "system",
        }

    def read(self, message, where: str, content_optional: bool = False) -> Message:
        """One message object -> Message. Its text must be there (a missing or null text would train
        the turn as an empty string) unless `content_optional` (an OpenAI assistant turn with tool_calls)."""
        t = self.tags
        if not isinstance(message, dict):
            raise RowError(self.source, f"{where} must be an object, found {_short(message)}")
        if t.role_tag not in message:
            raise RowError(self.source, f"{where} has no '{t.role_tag}' key (role_tag); it has {_keys(message)}")
        tag = message[t.role_tag]
        if tag not in self.roles:
            known = ", ".join(repr(k) for k in self.roles)
            raise RowError(self.source, f"{where} has unknown role {tag!r}; expected one of {known} (see `tags`)")
        if message.get(t.content_tag) is None and not content_optional:
            found = "is null" if t.content_tag in message else f"is missing (the message has {_keys(message)})"
            raise RowError(self.source, f"{where} ({tag}): its '{t.content_tag}' (content_tag) {found}")
        return Message(self.roles[tag], _text(message.get(t.content_tag), f"{where} '{t.content_tag}'", self.source))


def _check_alternation(messages: list[Message], ranking: bool, source: str) -> None:
    for i, message in enumerate(messages):
        expected = ("user", "observation") if i % 2 == 0 else ("assistant", "function")
        if message.role not in expected:
            raise RowError(
                source,
                f"message {i} has role '{message.role}' but roles must alternate: user/observation at even "
                f"positions, assistant/function at odd positions (0-based, after a leading system message)",
            )
    if not messages:
        raise RowError(source, "no messages")
    if ranking and len(messages) % 2 == 0:
        raise RowError(source, "a ranking row's messages must end with a user turn (chosen/rejected answer it)")
    if not ranking and len(messages) % 2 == 1:
        raise RowError(source, f"the last message (#{len(messages) - 1}) is a '{messages[-1].role}' turn; "
                       "expected the conversation to end with an assistant/function turn")


def _read_messages(row: dict, spec: DatasetSpec, source: str) -> tuple[list, str]:
    column = spec.columns.messages
    raw = row.get(column)
    if not isinstance(raw, list):
        found = "missing" if raw is None else type(raw).__name__
        raise RowError(source, f"column '{column}' must be a list of messages, found {found}")
    reader = _MessageReader(spec, source)
    system_column = spec.columns.system
    system = _text(row.get(system_column) if system_column else None, f"column '{system_column}'", source)
    if raw and isinstance(raw[0], dict) and raw[0].get(spec.tags.role_tag) == spec.tags.system_tag:
        system = reader.read(raw[0], "message 0").content
        raw = raw[1:]
    return raw, system


def _ranking_pair(row: dict, spec: DatasetSpec, reader: _MessageReader) -> tuple[Message, Message]:
    pair = []
    for key, column in (("chosen", spec.columns.chosen), ("rejected", spec.columns.rejected)):
        value = row.get(column) if column else None
        if not isinstance(value, dict):
            raise RowError(reader.source, f"ranking row needs a message object in column '{column}' ({key})")
        message = reader.read(value, f"column '{column}'")
        if message.role not in ("assistant", "function"):
            raise RowError(reader.source, f"column '{column}' ({key}) must be an assistant/function message")
        pair.append(message)
    return pair[0], pair[1]


def convert_sharegpt(row: dict, spec: DatasetSpec, source: str) -> Conversation:
    raw, system = _read_messages(row, spec, source)
    reader = _MessageReader(spec, source)
    messages = [reader.read(m, f"message {i}") for i, m in enumerate(raw)]
    return _finish(row, spec, source, messages, system, reader)


def convert_openai(row: dict, spec: DatasetSpec, source: str) -> Conversation:
    """Like sharegpt, plus OpenAI's `tool_calls` (-> function turn) and consecutive tool results
    merged into one observation turn (LF's convention)."""
    raw, system = _read_messages(row, spec, source)
    reader = _MessageReader(spec, source)
    messages: list[Message] = []
    tool_results: list[str] = []
    for i, item in enumerate(raw):
        has_calls = isinstance(item, dict) and bool(item.get("tool_calls"))
        message = reader.read(item, f"message {i}", content_optional=has_calls)
        calls = item.get("tool_calls") if message.role in ("assistant", "function") else None
        if calls:
            try:
                message = Message("function", json.dumps([c["function"] for c in calls], ensure_ascii=False))
            except (TypeError, KeyError):
                raise RowError(source, f"message {i} 'tool_calls' must be a list of {{'function': ...}} objects")
        if message.role == "observation":
            tool_results.append(message.content)
            continue
        if tool_results:
            messages.append(Message("observation", "\n</tool_response>\n<tool_response>\n".join(tool_results)))
            tool_results = []
        messages.append(message)
    if tool_results:
        messages.append(Message("observation", "\n</tool_response>\n<tool_response>\n".join(tool_results)))
    return _finish(row, spec, source, messages, system, reader)


def _finish(row, spec, source, messages, system, reader) -> Conversation:
    _check_alternation(messages, spec.ranking, source)
    chosen = rejected = None
    if spec.ranking:
        chosen, rejected = _ranking_pair(row, spec, reader)
    return _checked(Conversation(
        messages=tuple(messages),
        system=system,
        tools=_tools(row, spec.columns.tools),
        chosen=chosen,
        rejected=rejected,
        kto_tag=_kto_tag(row, spec.columns.kto_tag, source),
        source=source,
        images=_images(row, spec.columns.images, source),
    ))


def _checked(conv: Conversation) -> Conversation:
    """Refuse a turn whose prompt and answer are both empty or whitespace: it would train the end of
    sequence only. An answer counts as empty when the row has none (prompt-only rows, pretraining text)."""
    def blank(message: Message | None) -> bool:
        return message is None or not message.content.strip()

    turns = range(0, len(conv.messages), 2)
    for i in turns:
        answers = conv.messages[i + 1 : i + 2] or [a for a in (conv.chosen, conv.rejected) if a is not None]
        if blank(conv.messages[i]) and all(blank(answer) for answer in answers):
            where = f"turn {i // 2 + 1} of {len(turns)}: " if len(turns) > 1 else ""
            raise RowError(conv.source, f"{where}the prompt and the answer are both empty or whitespace; "
                           "nothing to train on")
    return conv


def columns_read(spec: DatasetSpec) -> dict[str, str]:
    """`columns` key -> column name, for every column the spec's format reads."""
    keys = ["system", "tools", "kto_tag", "images"]
    if spec.formatting == "alpaca":
        keys += ["prompt", "query", "history"] + (["chosen", "rejected"] if spec.ranking else ["response"])
    else:
        keys += ["messages"] + (["chosen", "rejected"] if spec.ranking else [])
    return {key: getattr(spec.columns, key) for key in keys if getattr(spec.columns, key)}


def check_column_mapping(spec: DatasetSpec, rows: Iterable[Any], origin: str) -> None:
    """A column the entry's `columns` names itself must be in the data: some row must have it.

    A column that no row has is not in the file's schema (HF datasets' rule), so the mapping is wrong
    and every row would be read without it (an empty prompt, no system, no history). A column that only
    some rows have is optional, as in LLaMA-Factory (e.g. `system` or `history` on a few rows).
    Defaults that the entry does not list (alpaca's `input`) may be absent."""
    read = columns_read(spec)
    named = {key: read[key] for key in spec.mapped_columns if key in read}
    present: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            present.update(dict.fromkeys(row))
    missing = {key: column for key, column in named.items() if column not in present}
    if not missing or not present:  # no row objects at all: each row is reported as invalid instead
        return
    mapping = ", ".join(f"{key} -> '{column}'" for key, column in missing.items())
    actual = ", ".join(repr(column) for column in list(present)[:20])
    raise DataError(f"{spec.where}: `columns` maps {mapping}, but no row of {origin} has "
                    f"{'that column' if len(missing) == 1 else 'these columns'}; its columns are {actual}. "
                    "Fix the mapping, or remove it from `columns`.")


CONVERTERS = {"alpaca": convert_alpaca, "sharegpt": convert_sharegpt, "openai": convert_openai}


def convert_row(row, spec: DatasetSpec, source: str) -> Conversation:
    """One raw row -> Conversation, or RowError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise RowError(source, f"expected an object (a row with named columns), found {_short(row)}")
    return CONVERTERS[spec.formatting](row, spec, source)
