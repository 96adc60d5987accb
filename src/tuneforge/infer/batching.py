"""Continuous batching: several sequences decoded together, new ones joining between steps.

    decoder = BatchDecoder(engine, max_batch=8)
    answers = decoder.generate([prompt_ids_1, prompt_ids_2, ...])        # predict: token ids per prompt

Each step: sequences waiting are prefilled one by one (the model's own forward on the prompt) and join
the batch while it has room; every active sequence picks its next token with its own settings (greedy
or sampled, seed, repetition penalty, budget); finished ones leave; one decode step runs the rest
together (``LeanDecodeStep.step_batch`` over a ``SlotKVCache``: the weights are read once for all of
them, which is what makes n streams cheaper than n separate ones on a CPU). A model the lean step does
not support decodes each sequence with its own forward and cache in the same loop (same answers, no
speed-up). ``BatchWorker`` (infer/batch_worker.py) runs this loop in a thread for the API.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from tuneforge.infer.decoding import cache_argument, new_kv_cache, pick_next_token


@dataclass(eq=False)
class DecodeRequest:
    """One sequence: its prompt, settings (``GenerationSettings``) and what has been generated."""

    prompt_ids: list[int]
    settings: object
    on_token: Callable[[int], None] | None = None  # called with each new token id, in the decode thread
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (a stop token), "length" (the budget), "cancelled"
    cancelled: bool = False
    # decode state
    budget: int = 0
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object = None  # own cache when the lean step is not used
    pixels: dict | None = None  # a vision-language prompt's images: decoded on its own (BatchWorker.submit_images)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class BatchDecoder:
    """Not thread-safe by itself: one thread calls ``step`` (``add`` may come from others: a deque)."""

    def __init__(self, engine, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self.waiting: deque[DecodeRequest] = deque()
        self.active: list[DecodeRequest] = []  # in order of arrival
        self.pooled: list[DecodeRequest] = []  # those in `slots` (the lean step), in slot order
        self.lean = engine.fast_step
        self.slots = None

    # ---- public ------------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], settings=None, on_token=None) -> DecodeRequest:
        settings = settings or self.engine.settings
        request = DecodeRequest(list(prompt_ids), settings, on_token)
        request.budget = settings.new_token_budget(len(request.prompt_ids))
        self.waiting.append(request)
        return request

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    def generate(self, prompts: Sequence[Sequence[int]], settings=None,
                 on_done: Callable[[int, DecodeRequest], None] | None = None) -> list[list[int]]:
        """New token ids for every prompt (stop token excluded), decoded ``max_batch`` at a time;
        ``on_done(index, request)`` as each finishes (in finishing order)."""
        requests = [self.add(p, settings) for p in prompts]
        self.drain(requests, on_done)
        return [r.generated for r in requests]

    def drain(self, requests: Sequence[DecodeRequest],
              on_done: Callable[[int, DecodeRequest], None] | None = None) -> None:
        """Step until nothing is left; ``on_done(index in requests, request)`` as each of them finishes."""
        index = {id(r): i for i, r in enumerate(requests)}
        while not self.idle:
            for request in self.step():
                if on_done is not None and id(request) in index:
                    on_done(index[id(request)], request)

    def step(self) -> list[DecodeRequest]:
        """Admit, pick one token for each active sequence, run one decode step; returns the requests that
        finished in this step."""
        with torch.inference_mode():
            never_admitted = self._admit()  # cancelled while waiting, or beam searches: they hold no slot
            decoded = self._pick_tokens()
            for request in decoded:
                self._leave(request)
            if self.active:
                self._decode()
        if self.idle:
            self.slots = None  # free the buffers between bursts
        return never_admitted + decoded

    # ---- steps -------------------------------------------------------------------------------
    def _admit(self) -> list[DecodeRequest]:
        """Prefill waiting requests while there is room; returns those that finished without a slot."""
        engine, finished = self.engine, []
        while self.waiting and len(self.active) < self.max_batch:
            request = self.waiting.popleft()
            if request.cancelled:
                request.finish_reason = "cancelled"
                finished.append(request)
                continue
            settings, device = request.settings, engine.device
            if settings.num_beams > 1:  # beam search knows its answer only at the end: model.generate, alone
                request.generated = engine.beam_search(request.prompt_ids, settings)
                request.finish_reason = "length" if len(request.generated) >= request.budget else "stop"
                finished.append(request)
                continue
            if settings.seed is not None and not settings.greedy:
                request.generator = torch.Generator(device=device).manual_seed(int(settings.seed))
            if settings.repetition_penalty != 1.0:
                request.seen = torch.zeros(engine.vocab_size, dtype=torch.bool, device=device)
                request.seen[torch.tensor(request.prompt_ids, device=device)] = True
            cache = new_kv_cache(engine.model)
            input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=device)
            out = engine.model(input_ids=input_ids, **cache_argument(engine.model, cache), use_cache=True,
                               logits_to_keep=1)
            request.logits = out.logits[0, -1]
            if self.lean is not None and self.lean.prepare_cache(cache):
                if self.slots is None:
                    self.slots = self.lean.new_slot_cache()
                self.slots.add([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])
                self.pooled.append(request)
            else:
                request.cache = cache
            self.active.append(request)
        return finished

    def _pick_tokens(self) -> list[DecodeRequest]:
        finished = []
        stop_ids = self.engine.stop_id_set
        for request in self.active:
            if request.cancelled:
                request.finish_reason = "cancelled"
            else:
                token = int(pick_next_token(request.logits, request.settings, request.seen, request.generator))
                if token in stop_ids:
                    request.finish_reason = "stop"
                else:
                    request.generated.append(token)
                    if request.seen is not None:
                        request.seen[token] = True
                    if request.on_token is not None:
                        request.on_token(token)
                    if len(request.generated) >= request.budget:
                        request.finish_reason = "length"
            if request.done:
                finished.append(request)
        return finished

    def _leave(self, request: DecodeRequest) -> None:
        own_cache = request.cache is not None
        request.logits = request.cache = request.seen = None
        if own_cache:
            self.active.remove(request)
            return
        slot = self.pooled.index(request)
        moved = self.slots.remove(slot)
        if moved is not None:  # the last slot's sequence now sits at `slot`
            self.pooled[slot] = self.pooled[moved]
        self.pooled.pop()
        self.active.remove(request)

    def _decode(self) -> None:
        engine = self.engine
        if self.pooled:
            tokens = torch.tensor([r.generated[-1] for r in self.pooled], dtype=torch.long, device=engine.device)
            logits = self.lean.step_batch(tokens, self.slots)
            for row, request in zip(logits, self.pooled):
                request.logits = row
        for request in self.active:
            if request.cache is not None:  # a model the lean step does not support: its own forward
                token = torch.tensor([[request.generated[-1]]], dtype=torch.long, device=engine.device)
                out = engine.model(input_ids=token, **cache_argument(engine.model, request.cache), use_cache=True)
                request.logits = out.logits[0, -1]

