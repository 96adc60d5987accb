"""Pieces of the decode loop: KV cache, next-token choice, incremental detokenization, stop words."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_REPLACEMENT_CHAR = "\ufffd"


class GrowableLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes into a preallocated buffer (doubling when full).

    ``DynamicLayer`` concatenates the whole cache on every step, which on a CPU costs about as much
    as the attention itself once the answer gets long. Here a step is one small copy; the layer
    hands out views of the filled part, so the model sees exactly what ``DynamicLayer`` would give.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._length = 0
        self._key_buf: torch.Tensor | None = None
        self._value_buf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._length, self._length + key_states.shape[-2]
        if self._key_buf is None or end > self._key_buf.shape[-2]:
            capacity = max(256, 2 * end)
            self._key_buf = _grown(self._key_buf, key_states, capacity, start)
            self._value_buf = _grown(self._value_buf, value_states, capacity, start)
        self._key_buf[..., start:end, :].copy_(key_states)
        self._value_buf[..., start:end, :].copy_(value_states)
        self._set_length(end)
        return self.keys, self.values

    def _set_length(self, length: int) -> None:
        self._length = length
        self.keys = self._key_buf[..., :length, :]
        self.values = self._value_buf[..., :length, :]

    def cast_(self, dtype: torch.dtype) -> None:
        """Keep the cache in ``dtype`` from now on (the lean CPU step attends in float32)."""
        if self._key_buf is not None and self._key_buf.dtype != dtype:
            self._key_buf, self._value_buf = self._key_buf.to(dtype), self._value_buf.to(dtype)
            self.dtype = dtype
            self._set_length(self._length)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized and self._key_buf is not None:
            self._set_length(max(self._length + tokens_to_remove, 0))

    def reset(self) -> None:
        super().reset()
        self._length, self._key_buf, self._value_buf = 0, None, None

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("GrowableLayer is for single-sequence decoding")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("GrowableLayer is for single-sequence decoding")


def _grown(old: torch.Tensor | None, like: torch.Tensor, capacity: int, keep: int) -> torch.Tensor:
    shape = list(like.shape)
    shape[-2] = capacity
    new = like.new_empty(shape)
    if old is not None and keep:
        new[..., :keep, :].copy_(old[..., :keep, :])
    return new


def cache_argument(model, cache: DynamicCache) -> dict[str, DynamicCache]:
    """The keyword that hands ``cache`` to ``model``'s forward: ``cache`` where the forward names it so (transformers
    5.24 deprecates ``past_key_values``, its removal announced for 5.40), else ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel passes kwargs on
    return {_cache_keyword(type(base)): cache}


_CACHE_KEYWORDS: dict[type, str] = {}


def _cache_keyword(model_class: type) -> str:
    if model_class not in _CACHE_KEYWORDS:
        parameters = inspect.signature(model_class.forward).parameters
        _CACHE_KEYWORDS[model_class] = "cache" if "cache" in parameters else "past_key_values"
    return _CACHE_KEYWORDS[model_class]


def new_kv_cache(model) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose full-attention layers are ``GrowableLayer``s.

    Sliding-window or other special layers the config asks for are kept as transformers made them.
    """
    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    except (TypeError, ValueError, AttributeError):  # a config this transformers cannot read layer types from
        cache = DynamicCache()
    if cache.layers:
        cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    elif cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = GrowableLayer
    return cache


def pick_next_token(logits: torch.Tensor, settings: Any, seen: torch.Tensor | None,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Next token id (0-d tensor) from the last position's logits ``[vocab]``.

    Order as in transformers: repetition penalty, temperature, top-k, top-p, then sampling.
    """
    if seen is not None:
        penalty = settings.repetition_penalty
        logits = logits.float()
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen[: logits.shape[-1]], penalised, logits)
    if settings.greedy:
        return torch.argmax(logits)
    logits = logits.float() / settings.temperature
    top_k = settings.top_k
    if 0 < top_k < logits.shape[-1]:
        values, indices = torch.topk(logits, top_k)  # sorted, largest first
    else:
        values, indices = torch.sort(logits, descending=True)
    probs = torch.softmax(values, dim=-1)
    if settings.top_p < 1.0:
        mass_before = torch.cumsum(probs, dim=-1) - probs
        probs = probs.masked_fill(mass_before >= settings.top_p, 0.0)  # the top token always stays
    choice = torch.multinomial(probs, 1, generator=generator)
    return indices[choice[0]]


class IncrementalDecoder:
    """Token ids in, stable text deltas out.

    Each step decodes a short window (the previous emitted token(s) + the new ones) and emits only
    the part after the previously decoded text, so tokenizers that treat the start of a string
    specially (a leading-space marker) still join correctly. While the window ends in an
    incomplete UTF-8 character ("\\ufffd" after byte-level decoding), nothing is emitted.
    """

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start
        self._read_offset = 0    # everything before this is already emitted

    def _decode(self, ids: list[int]) -> str:
        return decode_text(self.tokenizer, ids, self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT_CHAR):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. bytes that never completed a character)."""
        if self._read_offset == len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self.ids)
        return new_text[len(prefix_text):]


def decode_text(tokenizer, ids: list[int], skip_special_tokens: bool = True) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


class StopWordFilter:
    """Passes text through until a stop word appears; never lets out a stop word or a piece of one.

    A text suffix that could be the start of a stop word is held back until the next text proves
    it is not (then it is released) or completes the stop word (then the stream ends before it).
    """

    def __init__(self, stop_words: tuple[str, ...] | list[str] = ()):
        self.words = tuple(w for w in stop_words if w)
        self._pending = ""

    def cut(self, text: str) -> str:
        """``text`` up to the first stop word."""
        hits = [i for i in (text.find(w) for w in self.words) if i >= 0]
        return text[: min(hits)] if hits else text

    def push(self, text: str) -> tuple[str, bool]:
        """(text that is safe to emit, whether a stop word was reached)."""
        if not self.words:
            return text, False
        pending = self._pending + text
        cut = self.cut(pending)
        if len(cut) < len(pending):
            self._pending = ""
            return cut, True
        hold = self._held_suffix_length(pending)
        self._pending = pending[len(pending) - hold:]
        return pending[: len(pending) - hold], False

    def _held_suffix_length(self, text: str) -> int:
        longest = 0
        for word in self.words:
            for n in range(min(len(word) - 1, len(text)), longest, -1):
                if text.endswith(word[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class TextAssembler:
    """Token ids in, safe text out: an ``IncrementalDecoder`` followed by a ``StopWordFilter``.

    ``push(token_id) -> (text, stopped)``; after the last token (no stop word reached) ``finish()`` returns
    what was held back."""

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True, stop_words=()):
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        self.stop_filter = StopWordFilter(stop_words)
        self.stopped = False

    def push(self, token_id: int) -> tuple[str, bool]:
        text, self.stopped = self.stop_filter.push(self.decoder.push(token_id))
        return text, self.stopped

    def finish(self) -> str:
        if self.stopped:
            return ""
        tail, _ = self.stop_filter.push(self.decoder.flush())
        return tail + self.stop_filter.flush()
