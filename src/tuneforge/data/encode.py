"""Conversations / documents -> token ids and labels, with LLaMA-Factory's truncation rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from tuneforge.data.formats import Conversation

IGNORE_INDEX = -100


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """Split a `cutoff_len` budget between a prompt (source) and its response (target).

    A short response keeps all of itself, a short prompt keeps all of itself, otherwise both are cut
    in proportion to their lengths. E.g. (3000, 2000, 1000) -> (600, 400).
    """
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


@dataclass
class SftEncoding:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    full_length: int = 0  # length before truncation
    truncated: bool = False
    dropped: str | None = None  # reason, when the sample must not be used

    def as_dict(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def _arg(data_args: Any, name: str, default: Any) -> Any:
    value = getattr(data_args, name, default)
    return default if value is None else value


def encode_sft_with_info(conv: Conversation, template, tokenizer, data_args) -> SftEncoding:
    """Encode one SFT conversation like LF's SupervisedDatasetProcessor and say what happened."""
    cutoff_len = int(_arg(data_args, "cutoff_len", 2048))
    train_on_prompt = bool(_arg(data_args, "train_on_prompt", False))
    mask_history = bool(_arg(data_args, "mask_history", False))
    truncation = _arg(data_args, "truncation", "keep_prompt")
    efficient_eos = bool(getattr(template, "efficient_eos", False))
    eos_id = tokenizer.eos_token_id

    if len(conv.messages) % 2 != 0 or not conv.messages:
        return SftEncoding(dropped="no assistant response to train on")
    system = conv.system or _arg(data_args, "default_system", "") or None
    pairs = template.encode_multiturn(tokenizer, list(conv.messages), system=system, tools=conv.tools or None)
    full_length = sum(len(s) + len(t) for s, t in pairs) + (1 if efficient_eos else 0)
    if truncation == "drop" and full_length > cutoff_len:
        return SftEncoding(full_length=full_length, dropped=f"longer than cutoff_len ({cutoff_len})")

    if mask_history:
        pairs = pairs[::-1]  # the last turn first, so it gets the budget
    input_ids: list[int] = []
    labels: list[int] = []
    total_length = 1 if efficient_eos else 0
    for turn_idx, (source_ids, target_ids) in enumerate(pairs):
        if total_length >= cutoff_len:
            break
        source_len, target_len = infer_seqlen(len(source_ids), len(target_ids), cutoff_len - total_length)
        source_ids, target_ids = source_ids[:source_len], target_ids[:target_len]
        total_length += source_len + target_len

        if train_on_prompt:
            source_label = list(source_ids)
        elif efficient_eos and turn_idx != 0 and source_len > 0:
            # the previous response's eos is the first token of this prompt: learn it there
            source_label = [eos_id] + [IGNORE_INDEX] * (source_len - 1)
        else:
            source_label = [IGNORE_INDEX] * source_len
        if mask_history and turn_idx != 0:  # (reversed) history turns are not trained
            target_label = [IGNORE_INDEX] * target_len
        else:
            target_label = list(target_ids)

        if mask_history:
            input_ids = list(source_ids) + list(target_ids) + input_ids
            labels = source_label + target_label + labels
        else:
            input_ids += list(source_ids) + list(target_ids)
            labels += source_label + target_label

    if efficient_eos:
        input_ids.append(eos_id)
        labels.append(eos_id)

    result = SftEncoding(input_ids, labels, full_length, truncated=len(input_ids) < full_length)
    if all(label == IGNORE_INDEX for label in labels):
        result.dropped = "no trained tokens left after truncation to cutoff_len"
    return result


def encode_sft(conv: Conversation, template, tokenizer, data_args) -> dict[str, list[int]] | None:
    """`{"input_ids", "labels"}` for one conversation, or None when the sample must be dropped."""
    result = encode_sft_with_info(conv, template, tokenizer, data_args)
    return None if result.dropped else result.as_dict()


def tokenize_documents(texts: Iterable[str], tokenizer) -> list[list[int]]:
    """Each document's ids followed by eos (and preceded by bos when the tokenizer adds one)."""
    add_bos = getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None
    bos = [tokenizer.bos_token_id] if add_bos else []
    return [bos + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]


def pack_blocks(documents: list[list[int]], cutoff_len: int, packing: bool = True) -> list[list[int]]:
    """Concatenate documents and cut into `cutoff_len` blocks, keeping the short last block
    (LF drops it). Without packing every document is one sample, truncated to `cutoff_len`."""
    if not packing:
        return [document[:cutoff_len] for document in documents]
    stream = [token for document in documents for token in document]
    return [stream[i : i + cutoff_len] for i in range(0, len(stream), cutoff_len)]


def encode_pt(texts: Iterable[str], tokenizer, data_args) -> dict[str, list[list[int]]]:
    """Stage pt: `{"input_ids": blocks, "labels": copies}` (see :func:`pack_blocks`)."""
    packing = getattr(data_args, "packing", None) is not False
    blocks = pack_blocks(tokenize_documents(texts, tokenizer), int(_arg(data_args, "cutoff_len", 2048)), packing)
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}
