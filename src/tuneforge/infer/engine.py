"""Chat engine: prompt -> streamed text with a hand-written KV-cache decode loop.

    engine = ChatEngine.from_config(cfg)
    for delta in engine.stream_chat([{"role": "user", "content": "Hi"}]):
        print(delta, end="", flush=True)
    print(engine.last_stats)

Why not ``model.generate`` in a thread: at batch size 1 on a CPU its per-step bookkeeping (logits
processors, stopping criteria, streamer queue) costs as much as a small model's forward pass. Here
the prompt is run once, then one token per step through the KV cache; sampling works on the last
logits only. Beam search (``num_beams > 1``) still goes through ``model.generate``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from tuneforge.config.args import GeneratingArguments
from tuneforge.errors import ConfigError
from tuneforge.infer.fast_step import LeanDecodeStep, auto_batch_weights_dtype, auto_decode_weights_dtype
from tuneforge.infer.decoding import (StopWordFilter, TextAssembler, cache_argument, decode_text, new_kv_cache,
                                      pick_next_token)
from tuneforge.infer.vision_chat import image_chat, image_pixels, prefill_inputs, vision_inputs_for


@dataclass(frozen=True)
class GenerationSettings(GeneratingArguments):
    """LLaMA-Factory's generating keys (config's `GeneratingArguments`, the one home of their defaults) plus
    ``default_system`` and ``seed``."""

    default_system: str | None = None
    seed: int | None = None

    @classmethod
    def from_any(cls, source: Any = None) -> "GenerationSettings":
        """From None, a mapping, or an object with these attributes (e.g. config ``GeneratingArguments``)."""
        if source is None:
            return cls()
        if isinstance(source, cls):
            return source
        if isinstance(source, Mapping):
            return cls().with_overrides(**source)
        names = [f.name for f in dataclasses.fields(cls)]
        return cls().with_overrides(**{n: getattr(source, n) for n in names if hasattr(source, n)})

    def with_overrides(self, **overrides: Any) -> "GenerationSettings":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown generation setting(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        new = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None or k in ("seed", "default_system")})
        new.validate()
        return new

    def validate(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature", "a number >= 0"),
            (0 < self.top_p <= 1, "top_p", "a number in (0, 1]"),
            (self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)"),
            (self.num_beams >= 1, "num_beams", "an integer >= 1"),
            (self.repetition_penalty > 0, "repetition_penalty", "a number > 0 (1.0 = off)"),
            (self.max_new_tokens > 0 or self.max_length > 0, "max_new_tokens/max_length", "one of them > 0"),
        ]
        for ok, key, expected in checks:
            if not ok:
                value = getattr(self, key, None) if "/" not in key else (self.max_new_tokens, self.max_length)
                raise ConfigError(f"generation setting `{key}` is {value!r}; expected {expected}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def new_token_budget(self, prompt_len: int) -> int:
        """LF rule: ``max_new_tokens`` wins when > 0, else ``max_length`` counts prompt + answer."""
        if self.max_new_tokens > 0:
            return self.max_new_tokens
        budget = self.max_length - prompt_len
        if budget <= 0:
            raise ConfigError(
                f"the prompt has {prompt_len} tokens but `max_length` is {self.max_length}; raise `max_length` "
                "or set `max_new_tokens`"
            )
        return budget


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    seconds: float          # prefill + decode, wall clock
    prefill_seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: generated tokens after the first over the time spent producing them."""
        decode = self.seconds - self.prefill_seconds
        if self.generated_tokens <= 1 or decode <= 0:
            return 0.0
        return (self.generated_tokens - 1) / decode

    def __str__(self) -> str:
        return (
            f"{self.generated_tokens} tokens in {self.seconds:.2f}s, {self.tokens_per_second:.1f} tokens/s "
            f"(prompt {self.prompt_tokens} tokens, prefill {self.prefill_seconds:.2f}s)"
        )


class ChatEngine:
    """Model + tokenizer + template + generation settings. Not thread-safe: one generation at a time."""

    def __init__(self, model, tokenizer, template, generating_args: Any = None, *, description: str = "",
                 fast_decode: bool = True, decode_weights_dtype=None, batch_weights_dtype=None):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.settings = GenerationSettings.from_any(generating_args)
        self.settings.validate()
        self.description = description or type(model).__name__
        self.last_stats: GenerationStats | None = None
        # The lean per-token step for plain Llama-style models; None = the model's own forward.
        self.fast_step = LeanDecodeStep.try_create(model, weights_dtype=decode_weights_dtype,
                                                   batch_weights_dtype=batch_weights_dtype) if fast_decode else None
        self.stop_ids = _stop_token_ids(template, tokenizer)
        # Text stop words that are not a single stop token (e.g. "Observation:") are matched on the text.
        self.stop_words = tuple(w for w in getattr(template, "stop_words", ()) if w and _single_token_id(tokenizer, w) not in self.stop_ids)
        self.vision = None  # a vision-language model's image settings (infer/vision_chat.py), set by from_config

    @classmethod
    def from_config(cls, cfg) -> "ChatEngine":
        """Load tokenizer, template and model (with adapters, not trainable) as a run config says."""
        from tuneforge.data.templates import template_for
        from tuneforge.model import load_model, load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
        template = template_for(cfg.data, tokenizer)
        template.fix_tokenizer(tokenizer)
        model = load_model(cfg.model, cfg.finetuning, is_trainable=False)
        settings = GenerationSettings.from_any(cfg.generating)
        if settings.default_system is None and cfg.data.default_system:
            settings = settings.with_overrides(default_system=cfg.data.default_system)
        infer_dtype = cfg.model.infer_dtype
        engine = cls(model, tokenizer, template, settings, description=describe_config(cfg, template),
                     decode_weights_dtype=auto_decode_weights_dtype(model, infer_dtype),
                     batch_weights_dtype=auto_batch_weights_dtype(model, infer_dtype))
        engine.vision = vision_inputs_for(cfg, model, tokenizer)
        return engine

    # ---- public API -------------------------------------------------------------------------
    def chat(self, messages: Sequence[Any], system: str | None = None, tools: str | None = None, **gen_overrides) -> str:
        """The whole answer (stop words removed): the streamed deltas joined."""
        return "".join(self.stream_chat(messages, system, tools, **gen_overrides))

    def stream_chat(self, messages: Sequence[Any], system: str | None = None, tools: str | None = None,
                    images: Sequence[str] = (), **gen_overrides) -> Iterator[str]:
        """Text deltas; never splits a UTF-8 character, never emits (part of) a stop word. `images`: files for a
        vision-language model, one per `<image>` in the messages (infer/vision_chat.py)."""
        settings = self.settings.with_overrides(**gen_overrides)
        messages, pixels = image_chat(self, messages, images) if images or self.vision else (messages, {})
        prompt_ids = self.encode_prompt(messages, system, tools, settings)
        if settings.num_beams > 1:  # beams only know the answer at the end
            text = decode_text(self.tokenizer, self.beam_search(prompt_ids, settings, pixels),
                               settings.skip_special_tokens)
            yield StopWordFilter(self.stop_words).cut(text)
            return
        ids = self._decode_ids(prompt_ids, settings, pixels)
        try:
            yield from self.text_deltas(ids, settings)
        finally:
            ids.close()  # records last_stats even when the caller stops early

    def text_deltas(self, token_ids: Iterable[int], settings: GenerationSettings | None = None,
                    stop_words: Sequence[str] = ()) -> Iterator[str]:
        """New token ids -> text deltas: never a split UTF-8 character, never (part of) a stop word (the
        template's and ``stop_words``); returns at a stop word (the caller then stops decoding)."""
        assembler = self.text_assembler(settings, stop_words)
        for token_id in token_ids:
            delta, stopped = assembler.push(token_id)
            if delta:
                yield delta
            if stopped:
                return
        tail = assembler.finish()
        if tail:
            yield tail

    def text_assembler(self, settings: GenerationSettings | None = None, stop_words: Sequence[str] = ()) -> TextAssembler:
        settings = settings or self.settings
        return TextAssembler(self.tokenizer, skip_special_tokens=settings.skip_special_tokens,
                             stop_words=(*self.stop_words, *stop_words))

    def generate_ids(self, prompt_ids: Sequence[int], images: Sequence[str] = (), **gen_overrides) -> list[int]:
        """New token ids for a ready prompt (stop token excluded); the raw decode loop. `images`: the files of
        a vision-language prompt whose image tokens are already in `prompt_ids` (data/media.py)."""
        settings = self.settings.with_overrides(**gen_overrides)
        pixels = image_pixels(self, images) if images else {}
        if settings.num_beams > 1:
            return self.beam_search(list(prompt_ids), settings, pixels)
        return list(self._decode_ids(list(prompt_ids), settings, pixels))

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_batch: int = 8, on_done=None,
                       **gen_overrides) -> list[list[int]]:
        """``generate_ids`` for many prompts, decoded ``max_batch`` at a time (infer/batching.py);
        ``on_done(index, ids)`` as each finishes."""
        from tuneforge.infer.batching import BatchDecoder

        settings = self.settings.with_overrides(**gen_overrides)
        done = None if on_done is None else (lambda index, request: on_done(index, request.generated))
        return BatchDecoder(self, max_batch).generate(prompts, settings, done)

    def chat_batch(self, conversations: Sequence[Mapping[str, Any]], max_batch: int = 8, on_done=None,
                   **gen_overrides) -> list[str]:
        """``chat`` for many conversations decoded together. Each item: ``messages`` (+ ``system``, ``tools``,
        ``images``) and any generation overrides of its own (e.g. ``max_new_tokens``); ``on_done(index, text)`` as
        each finishes. Conversations with images are answered one at a time after the others (``stream_chat``)."""
        from tuneforge.infer.batching import BatchDecoder

        decoder = BatchDecoder(self, max_batch)
        requests, batched, alone = [], [], []
        for index, conversation in enumerate(conversations):
            own = {k: v for k, v in conversation.items() if k not in ("messages", "system", "tools", "images")}
            if conversation.get("images"):
                alone.append((index, conversation, {**gen_overrides, **own}))
                continue
            settings = self.settings.with_overrides(**{**gen_overrides, **own})
            prompt = self.encode_prompt(conversation["messages"], conversation.get("system"),
                                        conversation.get("tools"), settings)
            requests.append(decoder.add(prompt, settings))
            batched.append(index)
        answers: list[str] = [""] * len(conversations)

        def finished(index: int, text: str) -> None:
            answers[index] = text
            if on_done is not None:
                on_done(index, text)

        decoder.drain(requests, lambda k, request: finished(
            batched[k], "".join(self.text_deltas(request.generated, request.settings))))
        for index, conversation, overrides in alone:
            finished(index, self.chat(conversation["messages"], conversation.get("system"), conversation.get("tools"),
                                      images=conversation["images"], **overrides))
        return answers

    def parse_tool_calls(self, text: str) -> list[tuple[str, str]] | None:
        """[(name, arguments JSON)] when ``text`` is a function call in the template's tool format (the
        tokenizer's own template: Qwen's ``<tool_call>``, then Llama 3's JSON), else None."""
        from tuneforge.data.templates.tools import extract_function_calls

        own = getattr(self.template, "tool_format", None)
        for tool_format in [own] if own else ["qwen", "llama3"]:
            calls = extract_function_calls(tool_format, text)
            if calls:
                return calls
        return None

    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens (``max_position_embeddings``), None when it does not say."""
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None

    @property
    def stop_id_set(self) -> frozenset[int]:
        """`stop_ids` for membership tests (derived: callers may replace `stop_ids`)."""
        return frozenset(self.stop_ids)

    @property
    def vocab_size(self) -> int:
        return _vocab_size(self.model, self.tokenizer)

    def encode_prompt(self, messages: Sequence[Any], system: str | None = None, tools: str | None = None,
                      settings: GenerationSettings | None = None) -> list[int]:
        settings = settings or self.settings
        system = system or settings.default_system or None  # None lets the template use its own default
        return list(self.template.encode_prompt(self.tokenizer, list(messages), system, tools))

    # ---- decoding ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _decode_ids(self, prompt_ids: list[int], settings: GenerationSettings, pixels: dict | None = None) -> Iterator[int]:
        """Yield new token ids one by one; stops (without yielding) on a stop token or the budget. `pixels`: a
        vision-language prompt's images, for its forward (then the model's own step decodes)."""
        budget = settings.new_token_budget(len(prompt_ids))
        device = self.device
        generator = None
        if settings.seed is not None and not settings.greedy:
            generator = torch.Generator(device=device).manual_seed(int(settings.seed))
        stop_ids = self.stop_id_set
        seen = None
        if settings.repetition_penalty != 1.0:
            seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
            seen[torch.tensor(prompt_ids, device=device)] = True
        cache = new_kv_cache(self.model)
        generated = 0
        start = time.perf_counter()
        prefill_seconds = 0.0
        # inference_mode is thread-local and a consumer (the web UI) may resume this generator on
        # another thread: enter it afresh around each piece of work, never across a `yield`.
        try:
            with torch.inference_mode():
                input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
                extra = prefill_inputs(self.vision, input_ids, pixels) if pixels else {}
                logits = self.model(input_ids=input_ids, **cache_argument(self.model, cache), use_cache=True,
                                    logits_to_keep=1, **extra).logits[0, -1]
                prefill_seconds = time.perf_counter() - start
                step_input = torch.empty((1, 1), dtype=torch.long, device=device)
                position = len(prompt_ids)
                fast_step = None if extra else self.fast_step  # its positions are plain ones, not image-shifted
                if fast_step is not None and not fast_step.prepare_cache(cache):
                    fast_step = None
            while True:
                with torch.inference_mode():
                    token_id = int(pick_next_token(logits, settings, seen, generator))
                if token_id in stop_ids:
                    return
                generated += 1
                yield token_id
                if generated >= budget:
                    return
                with torch.inference_mode():
                    if seen is not None:
                        seen[token_id] = True
                    step_input.fill_(token_id)
                    if fast_step is not None:
                        logits = fast_step.step(step_input, cache, position)
                    else:
                        logits = self.model(input_ids=step_input, **cache_argument(self.model, cache),
                                            use_cache=True).logits[0, -1]
                position += 1
        finally:
            self.last_stats = GenerationStats(len(prompt_ids), generated, time.perf_counter() - start, prefill_seconds)

    def beam_search(self, prompt_ids: list[int], settings: GenerationSettings, pixels: dict | None = None) -> list[int]:
        """`model.generate` with beams; `pixels`: a vision-language prompt's images (each beam sees them)."""
        start = time.perf_counter()
        kwargs = dict(
            num_beams=settings.num_beams, length_penalty=settings.length_penalty, do_sample=not settings.greedy,
            max_new_tokens=settings.new_token_budget(len(prompt_ids)), eos_token_id=list(self.stop_ids) or None,
            repetition_penalty=settings.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id,
        )
        if not settings.greedy:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
            if settings.seed is not None:
                torch.manual_seed(int(settings.seed))
        with torch.inference_mode():
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            extra = prefill_inputs(self.vision, input_ids, pixels) if pixels else {}
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs, **extra)
        new = [int(t) for t in out[0, len(prompt_ids):]]
        while new and new[-1] in self.stop_ids:
            new.pop()
        self.last_stats = GenerationStats(len(prompt_ids), len(new), time.perf_counter() - start, 0.0)
        return new


def _single_token_id(tokenizer, word: str) -> int | None:
    ids = tokenizer.encode(word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _stop_token_ids(template, tokenizer) -> tuple[int, ...]:
    """Template's stop tokens (when it can say) + eos, without duplicates."""
    ids: list[int] = []
    if hasattr(template, "stop_token_ids"):
        ids.extend(int(i) for i in template.stop_token_ids(tokenizer))
    else:
        ids.extend(i for i in (_single_token_id(tokenizer, w) for w in getattr(template, "stop_words", ())) if i is not None)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return tuple(dict.fromkeys(ids))


def _vocab_size(model, tokenizer) -> int:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is not None:
        return int(output.weight.shape[0])
    return len(tokenizer)


def describe_config(cfg, template=None) -> str:
    """One line for headers: model, adapter(s), template."""
    model_args = cfg.model
    adapter = model_args.adapter_name_or_path or "none"
    if isinstance(adapter, (list, tuple)):
        adapter = ",".join(adapter)
    template_name = getattr(template, "name", None) or cfg.data.template or "auto"
    return f"model: {model_args.model_name_or_path} | adapter: {adapter} | template: {template_name}"

