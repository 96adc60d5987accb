"""Conversations / documents -> token ids and labels, with LLaMA-Factory's truncation rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from tuneforge.config.args import DataArguments
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
    trained_tokens: int | None = None  # labels that are not IGNORE_INDEX, when the encoder counted them

    def as_dict(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def encode_sft_with_info(conv: Conversation, template, tokenizer, data_args: DataArguments) -> SftEncoding:
    """Encode one SFT conversation like LF's SupervisedDatasetProcessor and say what happened."""
    pieces = sft_pieces(conv, template, tokenizer, data_args)
    if isinstance(pieces, SftEncoding):
        return pieces
    return encode_sft_pieces(pieces, lambda text: tokenizer.encode(text, add_special_tokens=False), template,
                             tokenizer, data_args)


def sft_pieces(conv: Conversation, template, tokenizer, data_args: DataArguments) -> list[list[str | int]] | SftEncoding:
    """Per message, the texts still to tokenize and token ids (`Template.multiturn_pieces`), or the reason to drop
    the conversation. Many rows' texts can then be tokenized in one call (stage_encode.py)."""
    if len(conv.messages) % 2 != 0 or not conv.messages:
        return SftEncoding(dropped="no assistant response to train on")
    system = conv.system or data_args.default_system or None
    if not hasattr(template, "multiturn_pieces"):  # a template object of the caller's own: its ids as they are
        pairs = template.encode_multiturn(tokenizer, list(conv.messages), system=system, tools=conv.tools or None)
        return [list(ids) for pair in pairs for ids in pair]
    extra = {}
    if getattr(template, "reasoning", False) and data_args.mask_history and not data_args.preserve_thinking:
        extra["discarding_history_cot"] = True  # LF: only the trained (last) turn keeps its thought
    return template.multiturn_pieces(tokenizer, list(conv.messages), system=system, tools=conv.tools or None, **extra)


def encode_sft_pieces(pieces: list[list[str | int]], encode, template, tokenizer, data_args: DataArguments) -> SftEncoding:
    """`sft_pieces` with their texts tokenized by `encode(text) -> ids`, cut to `cutoff_len` and labelled."""
    from tuneforge.data.templates.slots import pieces_to_ids

    ids = [pieces_to_ids(message, encode) for message in pieces]
    return assemble_sft([(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)], template, tokenizer, data_args)


def assemble_sft(pairs: list[tuple[list[int], list[int]]], template, tokenizer, data_args: DataArguments) -> SftEncoding:
    """(prompt ids, response ids) per turn -> input ids and labels, with LF's truncation and masking rules."""
    cutoff_len = data_args.cutoff_len
    train_on_prompt = data_args.train_on_prompt
    mask_history = data_args.mask_history
    truncation = data_args.truncation
    efficient_eos = bool(getattr(template, "efficient_eos", False))
    eos_id = tokenizer.eos_token_id if efficient_eos else None
    full_length = sum(len(s) + len(t) for s, t in pairs) + (1 if efficient_eos else 0)
    if truncation == "drop" and full_length > cutoff_len:
        return SftEncoding(full_length=full_length, dropped=f"longer than cutoff_len ({cutoff_len})")

    if mask_history:
        pairs = pairs[::-1]  # the last turn first, so it gets the budget
    input_ids: list[int] = []
    labels: list[int] = []
    masked = 0  # IGNORE_INDEX labels written (token ids never are), so no scan of the labels afterwards
    total_length = 1 if efficient_eos else 0
    for turn_idx, (source_ids, target_ids) in enumerate(pairs):
        if total_length >= cutoff_len:
            break
        source_len, target_len = infer_seqlen(len(source_ids), len(target_ids), cutoff_len - total_length)
        if source_len < len(source_ids) or target_len < len(target_ids):
            source_ids, target_ids = source_ids[:source_len], target_ids[:target_len]
        total_length += source_len + target_len

        if train_on_prompt:
            source_label = source_ids
        elif efficient_eos and turn_idx != 0 and source_len > 0:
            # the previous response's eos is the first token of this prompt: learn it there
            source_label = [eos_id] + [IGNORE_INDEX] * (source_len - 1)
            masked += source_len - 1
        else:
            source_label = [IGNORE_INDEX] * source_len
            masked += source_len
        if mask_history and turn_idx != 0:  # (reversed) history turns are not trained
            target_label = [IGNORE_INDEX] * target_len
            masked += target_len
        else:
            target_label = target_ids

        if mask_history:
            input_ids = [*source_ids, *target_ids, *input_ids]
            labels = [*source_label, *target_label, *labels]
        else:  # in place: the token lists are not copied more than once
            input_ids += source_ids
            input_ids += target_ids
            labels += source_label
            labels += target_label

    if efficient_eos:
        input_ids.append(eos_id)
        labels.append(eos_id)

    trained = len(labels) - masked
    result = SftEncoding(input_ids, labels, full_length, truncated=len(input_ids) < full_length, trained_tokens=trained)
    if trained == 0:
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
    packing = data_args.packing is not False
    blocks = pack_blocks(tokenize_documents(texts, tokenizer), data_args.cutoff_len, packing)
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}


# ----------------------------------------------------------------------------- preference stages
@dataclass
class PairEncoding:
    """Stage rm / dpo: one prompt with its chosen and rejected answers (labels -100 on the prompt)."""

    input_ids: list[int] = field(default_factory=list)  # prompt + chosen
    labels: list[int] = field(default_factory=list)
    rejected_input_ids: list[int] = field(default_factory=list)  # prompt + rejected
    rejected_labels: list[int] = field(default_factory=list)
    full_length: int = 0  # prompt + longer answer, before truncation
    truncated: bool = False
    dropped: str | None = None


def _prompt_and_answers(conv: Conversation, template, tokenizer, data_args, answers) -> tuple[list[int], list[list[int]]]:
    """Prompt ids (all turns before the answer) and each answer's ids (+ eos with efficient_eos)."""
    system = conv.system or data_args.default_system or None
    prompt_ids: list[int] = []
    answer_ids: list[list[int]] = []
    for answer in answers:
        prompt_ids, ids = template.encode_oneturn(tokenizer, [*conv.messages, answer], system=system,
                                                  tools=conv.tools or None)
        if getattr(template, "efficient_eos", False):
            ids = ids + [tokenizer.eos_token_id]
        answer_ids.append(list(ids))
    return list(prompt_ids), answer_ids


@dataclass(frozen=True)
class _TwoAnswers:
    """A prompt and two answers cut to one budget: `(prompt + first, prompt + second)`, label masks."""

    first_input_ids: list[int] = field(default_factory=list)
    first_labels: list[int] = field(default_factory=list)
    second_input_ids: list[int] = field(default_factory=list)
    second_labels: list[int] = field(default_factory=list)
    full_length: int = 0
    truncated: bool = False
    dropped: str | None = None


def _encode_two_answers(prompt_conv: Conversation, answers, template, tokenizer, data_args) -> _TwoAnswers:
    """One `infer_seqlen` budget for a prompt and two answers (chosen/rejected, rated/KL), as LF does: the
    longer answer decides, so both keep the same prompt; `truncation: drop` drops the sample instead."""
    cutoff_len = data_args.cutoff_len
    prompt_ids, (first_ids, second_ids) = _prompt_and_answers(prompt_conv, template, tokenizer, data_args, answers)
    longest = max(len(first_ids), len(second_ids))
    full_length = len(prompt_ids) + longest
    if data_args.truncation == "drop" and full_length > cutoff_len:
        return _TwoAnswers(full_length=full_length, dropped=f"longer than cutoff_len ({cutoff_len})")
    source_len, target_len = infer_seqlen(len(prompt_ids), longest, cutoff_len)
    prompt_ids, first_ids, second_ids = prompt_ids[:source_len], first_ids[:target_len], second_ids[:target_len]
    masked = [IGNORE_INDEX] * source_len
    return _TwoAnswers(prompt_ids + first_ids, masked + first_ids, prompt_ids + second_ids, masked + second_ids,
                       full_length, source_len + target_len < full_length,
                       None if first_ids and second_ids else "no answer tokens left after truncation to cutoff_len")


def encode_pairwise_with_info(conv: Conversation, template, tokenizer, data_args) -> PairEncoding:
    """Like LF's PairwiseDatasetProcessor: the prompt and both answers share one infer_seqlen budget
    (the longer answer decides), so chosen and rejected keep the same prompt."""
    if conv.chosen is None or conv.rejected is None:
        return PairEncoding(dropped="no chosen/rejected answers")
    if len(conv.messages) % 2 != 1:
        return PairEncoding(dropped="messages must end with a user turn before chosen/rejected")
    both = _encode_two_answers(conv, (conv.chosen, conv.rejected), template, tokenizer, data_args)
    return PairEncoding(both.first_input_ids, both.first_labels, both.second_input_ids, both.second_labels,
                        both.full_length, both.truncated, both.dropped)


@dataclass
class FeedbackEncoding:
    """Stage kto: prompt + answer with its desirable/undesirable tag, and the same prompt with a
    mismatched answer (another sample's) for the KL estimate."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kl_input_ids: list[int] = field(default_factory=list)
    kl_labels: list[int] = field(default_factory=list)
    kto_tag: bool = True
    full_length: int = 0
    truncated: bool = False
    dropped: str | None = None


def kl_answers(answers: list, batch_size: int = 1000) -> list:
    """LF's mismatched KL answers: within each preprocessing batch, sample i gets the answer of
    sample i-1 and the first sample the batch's last answer."""
    out = []
    for start in range(0, len(answers), batch_size):
        chunk = answers[start : start + batch_size]
        out.extend([chunk[-1], *chunk[:-1]])
    return out


def encode_feedback_with_info(conv: Conversation, kl_answer, template, tokenizer, data_args) -> FeedbackEncoding:
    """Like LF's FeedbackDatasetProcessor. `conv` ends with the tagged assistant answer; `kl_answer`
    (a Message) is the mismatched answer (see :func:`kl_answers`)."""
    if conv.kto_tag is None:
        return FeedbackEncoding(dropped="no kto_tag (true/false) value")
    if len(conv.messages) % 2 != 0 or not conv.messages:
        return FeedbackEncoding(dropped="no assistant answer to rate")
    prompt_conv = Conversation(messages=conv.messages[:-1], system=conv.system, tools=conv.tools)
    both = _encode_two_answers(prompt_conv, (conv.messages[-1], kl_answer), template, tokenizer, data_args)
    return FeedbackEncoding(both.first_input_ids, both.first_labels, both.second_input_ids, both.second_labels,
                            bool(conv.kto_tag), both.full_length, both.truncated, both.dropped)


def encode_prompt_only(conv: Conversation, template, tokenizer, data_args) -> dict[str, list[int]] | None:
    """Stage ppo (LF's UnsupervisedDatasetProcessor): `input_ids` = the generation prompt (assistant
    prefix included), `labels` = the reference answer's ids (not -100 masked; may be empty when the
    row has no answer). Both cut with infer_seqlen (`prompt_cut`: the prompt was). None when there is no user turn."""
    from tuneforge.data.formats import Message

    messages = list(conv.messages)
    if not messages:
        return None
    if len(messages) % 2 == 1:  # ends with the user turn: no reference answer
        messages.append(Message("assistant", ""))
    system = conv.system or data_args.default_system or None
    prompt_ids, answer_ids = template.encode_oneturn(tokenizer, messages, system=system, tools=conv.tools or None)
    answer_ids = list(answer_ids)
    if getattr(template, "efficient_eos", False):
        answer_ids.append(tokenizer.eos_token_id)
    source_len, target_len = infer_seqlen(len(prompt_ids), len(answer_ids), data_args.cutoff_len)
    return {"input_ids": list(prompt_ids)[:source_len], "labels": answer_ids[:target_len],
            "prompt_cut": source_len < len(prompt_ids)}
