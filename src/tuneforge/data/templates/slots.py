"""Slots, the pieces a chat template is made of, and how they become token ids or text (data/templates/model.py).

A slot is a plain string (``{{content}}`` replaced by the message text), a :class:`TokenSlot` (one special token,
inserted by id) or a :class:`SpecialSlot` (the tokenizer's bos / eos token, skipped when it has none). Every
string slot is tokenized on its own with ``add_special_tokens=False``, as LLaMA-Factory does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from tuneforge.errors import ModelError


@dataclass(frozen=True)
class TokenSlot:
    """One special token inserted by id, e.g. ``{"token": "<|im_start|>"}`` in the data file."""

    token: str


@dataclass(frozen=True)
class SpecialSlot:
    """The tokenizer's own ``bos_token`` or ``eos_token`` (``{"special": "eos_token"}`` in the data file)."""

    name: str  # "bos_token" | "eos_token"


Slot = Union[str, TokenSlot, SpecialSlot]
Slots = tuple[Slot, ...]


def fill_slots(slots: Slots, **values: str | None) -> list[Slot]:
    """Replace ``{{name}}`` placeholders in string slots (first occurrence, in keyword order, as LF does)."""
    out: list[Slot] = []
    for slot in slots:
        if isinstance(slot, str):
            for name, value in values.items():
                slot = slot.replace("{{" + name + "}}", value or "", 1)
        out.append(slot)
    return out


def token_id(tokenizer: Any, token: str) -> int:
    """The id of a single token; a clear ModelError when the tokenizer does not have it."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ModelError(f"the chat template needs the token {token!r}, which the tokenizer's vocabulary lacks")
    return tid


def slots_to_pieces(tokenizer: Any, slots: Iterable[Slot]) -> list[str | int]:
    """Texts still to tokenize and token ids, in order: what `slots_to_ids` encodes (a batch encoder can
    tokenize the texts of many rows at once, data/stage_encode.py)."""
    pieces: list[str | int] = []
    for slot in slots:
        if isinstance(slot, str):
            if slot:
                pieces.append(slot)
        elif isinstance(slot, TokenSlot):
            pieces.append(token_id(tokenizer, slot.token))
        else:
            special_id = getattr(tokenizer, f"{slot.name}_id", None)
            if special_id is not None:
                pieces.append(special_id)
    return pieces


def pieces_to_ids(pieces: Iterable[str | int], encode) -> list[int]:
    """Token ids of `pieces`, texts through `encode(text) -> ids`."""
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, str):
            ids += encode(piece)
        else:
            ids.append(piece)
    return ids


def slots_to_ids(tokenizer: Any, slots: Iterable[Slot]) -> list[int]:
    return pieces_to_ids(slots_to_pieces(tokenizer, slots), lambda text: tokenizer.encode(text, add_special_tokens=False))


def slots_to_text(slots: Iterable[Slot], bos_token: str | None, eos_token: str | None) -> str:
    parts = []
    for slot in slots:
        if isinstance(slot, str):
            parts.append(slot)
        elif isinstance(slot, TokenSlot):
            parts.append(slot.token)
        else:
            parts.append((bos_token if slot.name == "bos_token" else eos_token) or "")
    return "".join(parts)
