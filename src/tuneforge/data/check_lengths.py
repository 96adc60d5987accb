"""Token lengths for `tuneforge data check`: every row's prompt and answer tokens, and what `cutoff_len` cuts.

Fast: the message texts of all rows go through the fast tokenizer in batches (distinct texts once); the
template's own tokens per message (role markers, system prompt, turn ends) are measured once per kind of
conversation (system prompt, tools, roles) by encoding a probe conversation with the real template. A row's
prompt / answer length is then the sum of its texts' tokens and those constants, and truncation follows the
encoders' rules (`infer_seqlen` per turn for sft, one budget for prompt + answer otherwise).

Exact where it matters: rows whose estimated length comes within `margin` tokens of `cutoff_len` (either side)
are encoded for real with the stage's encoder (sft), up to MAX_EXACT rows, so the count of cut rows is exact
(an estimate is off by a token or two at most, where a text's first / last token merges with the template's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config.args import DataArguments
from tuneforge.data.encode import encode_sft_with_info, infer_seqlen
from tuneforge.data.formats import Conversation, Message

PROBE = "probe"  # a content whose tokens do not merge with the template's text around it
MAX_EXACT = 5000  # rows near cutoff_len re-encoded exactly
BATCH = 4096


@dataclass
class RowLength:
    prompt: int  # tokens of the prompt side (all turns' prompts for sft), template included
    answer: int  # tokens of the answer side (for rm/dpo/kto: the longer answer)
    full: int  # the sample before truncation
    kept: int  # after truncation to cutoff_len (0 when dropped)
    dropped: str = ""  # why the encoder drops the row
    exact: bool = False  # measured with the stage's encoder, not estimated


@dataclass
class Lengths:
    rows: list[RowLength] = field(default_factory=list)
    estimated_near_cutoff: int = 0  # rows near cutoff_len that stayed estimates (over MAX_EXACT)

    @property
    def truncated(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if not r.dropped and r.kept < r.full]


def token_counts(texts: list[str], tokenizer) -> list[int]:
    """len(tokenizer.encode(text, add_special_tokens=False)) for each text, in batches of distinct texts."""
    distinct = list(dict.fromkeys(texts))
    counts: dict[str, int] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    for start in range(0, len(distinct), BATCH):
        chunk = distinct[start : start + BATCH]
        if backend is not None:
            encoded = backend.encode_batch_fast(chunk, add_special_tokens=False) if hasattr(
                backend, "encode_batch_fast") else backend.encode_batch(chunk, add_special_tokens=False)
            counts.update(zip(chunk, (len(e) for e in encoded)))
        else:
            ids = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            counts.update(zip(chunk, map(len, ids)))
    return [counts[t] for t in texts]


def _turns(conv: Conversation, kind: str) -> list[Message] | None:
    """The messages the stage's encoder sees, the last one being the (longest) answer; None: no answer."""
    messages = list(conv.messages)
    if conv.chosen is not None and conv.rejected is not None:
        longer = max(conv.chosen, conv.rejected, key=lambda m: len(m.content))
        return messages + [longer]
    if kind == "prompt" and len(messages) % 2 == 1:
        return messages + [Message("assistant", "")]
    return messages if messages and len(messages) % 2 == 0 else None


class _Overheads:
    """The template's own tokens per message, for each kind of conversation (measured once per kind)."""

    def __init__(self, template, tokenizer, data_args: DataArguments, kind: str):
        self.template, self.tokenizer, self.kind = template, tokenizer, kind
        self.default_system = data_args.default_system or None  # "" = none, as the encoders
        self.probe_len = len(tokenizer.encode(PROBE, add_special_tokens=False))
        self.cache: dict[tuple, list[int]] = {}

    def get(self, conv: Conversation, messages: list[Message]) -> list[int] | None:
        """Per message of an sft row: template tokens; otherwise [prompt side, answer side]. None when a probe
        cannot stand in for the texts (function calls must be JSON, a bad tools column...)."""
        key = (conv.system, conv.tools, tuple(m.role for m in messages))
        if key not in self.cache:
            probe = [Message(m.role, PROBE) for m in messages]
            system, tools = conv.system or self.default_system, conv.tools or None
            try:
                if self.kind == "supervised":
                    pairs = self.template.encode_multiturn(self.tokenizer, probe, system=system, tools=tools)
                    self.cache[key] = [len(ids) - self.probe_len for pair in pairs for ids in pair]
                else:
                    prompt, answer = self.template.encode_oneturn(self.tokenizer, probe, system=system, tools=tools)
                    self.cache[key] = [len(prompt) - self.probe_len * (len(probe) - 1), len(answer) - self.probe_len]
            except Exception:  # noqa: BLE001 - the row is then encoded for real (sft) or counted without template
                self.cache[key] = None
        return self.cache[key]


def _simulate_sft(turns: list[tuple[int, int]], cutoff: int, data_args: DataArguments, efficient_eos: bool) -> tuple[int, int, str]:
    """(full length, kept length, drop reason) by encode_sft_with_info's rules, on lengths only."""
    full = sum(s + t for s, t in turns) + (1 if efficient_eos else 0)
    if data_args.truncation == "drop" and full > cutoff:
        return full, 0, f"longer than cutoff_len ({cutoff})"
    mask_history = data_args.mask_history
    order = turns[::-1] if mask_history else turns
    total, trained = (1 if efficient_eos else 0), 0
    for i, (source, target) in enumerate(order):
        if total >= cutoff:
            break
        new_source, new_target = infer_seqlen(source, target, cutoff - total)
        total += new_source + new_target
        if not (mask_history and i != 0):
            trained += new_target
    if data_args.train_on_prompt:
        trained = total
    return full, total, "" if trained or efficient_eos else "no trained tokens left after truncation to cutoff_len"


def measure(rows: list[Conversation], template, tokenizer, data_args: DataArguments, kind: str, margin: int | None = None) -> Lengths:
    """Lengths of every row as the stage's encoder would produce them (see the module docstring)."""
    cutoff = data_args.cutoff_len
    margin = max(8, cutoff // 50) if margin is None else margin
    if kind == "text":
        return _measure_pt(rows, tokenizer, data_args, cutoff)
    efficient_eos = bool(getattr(template, "efficient_eos", False))
    turns = [_turns(conv, kind) for conv in rows]
    texts = [m.content for messages in turns if messages for m in messages]
    counts = iter(token_counts(texts, tokenizer))
    overheads = _Overheads(template, tokenizer, data_args, kind)
    result = Lengths()
    for conv, messages in zip(rows, turns):
        if not messages:
            result.rows.append(RowLength(0, 0, 0, 0, dropped="no answer to train on"))
            continue
        sizes = [next(counts) for _ in messages]
        extra = overheads.get(conv, messages)
        if extra is None and kind == "supervised":
            result.rows.append(_exact(conv, template, tokenizer, data_args) or RowLength(0, 0, 0, 0, "cannot encode"))
            continue
        extra = extra or [0] * len(messages)
        if kind == "supervised":
            lengths = [size + add for size, add in zip(sizes, extra)]
            pairs = list(zip(lengths[::2], lengths[1::2]))
            full, kept, dropped = _simulate_sft(pairs, cutoff, data_args, efficient_eos)
            prompt, answer = sum(lengths[::2]), sum(lengths[1::2]) + (1 if efficient_eos else 0)
        else:
            prompt, answer = sum(sizes[:-1]) + extra[0], sizes[-1] + extra[1] + (1 if efficient_eos else 0)
            full = prompt + answer
            if data_args.truncation == "drop" and full > cutoff:
                kept, dropped = 0, f"longer than cutoff_len ({cutoff})"
            else:
                kept, dropped = sum(infer_seqlen(prompt, answer, cutoff)), ""
        result.rows.append(RowLength(prompt, answer, full, kept, dropped))
    if kind == "supervised":
        _make_exact(result, rows, template, tokenizer, data_args, cutoff, margin)
    return result


def _make_exact(result: Lengths, rows, template, tokenizer, data_args: DataArguments, cutoff: int, margin: int) -> None:
    """Re-encode the rows near cutoff_len with the real encoder: whether they are cut is then exact."""
    near = [i for i, r in enumerate(result.rows) if r.full and abs(r.full - cutoff) <= margin]
    result.estimated_near_cutoff = max(0, len(near) - MAX_EXACT)
    for i in near[:MAX_EXACT]:
        exact = _exact(rows[i], template, tokenizer, data_args)
        if exact is not None:  # None: the template cannot encode the row (the pipeline reports it)
            exact.prompt, exact.answer = result.rows[i].prompt, result.rows[i].answer
            result.rows[i] = exact


def _exact(conv: Conversation, template, tokenizer, data_args: DataArguments) -> RowLength | None:
    try:
        enc = encode_sft_with_info(conv, template, tokenizer, data_args)
    except Exception:  # noqa: BLE001
        return None
    answer = sum(1 for label in enc.labels if label != -100)
    return RowLength(len(enc.input_ids) - answer, answer, enc.full_length, len(enc.input_ids), enc.dropped or "", True)


def _measure_pt(rows: list[Conversation], tokenizer, data_args: DataArguments, cutoff: int) -> Lengths:
    """Stage pt: documents (+ bos / eos) are packed into cutoff_len blocks; without packing each is cut."""
    texts = [conv.messages[0].content if conv.messages else "" for conv in rows]
    special = 1 + bool(getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None)
    packing = data_args.packing is not False
    result = Lengths()
    for size in token_counts(texts, tokenizer):
        full = size + special
        result.rows.append(RowLength(0, full, full, full if packing else min(full, cutoff)))
    return result
