"""BatchWorker: a thread that runs the continuous-batching loop for many concurrent callers (the API).

    worker = BatchWorker(engine, max_batch=8, max_waiting=64)
    stream = worker.submit(prompt_ids, settings)           # raises Overloaded past max_waiting
    for token_id in stream:                                 # blocking; or `async for` from asyncio
        ...
    stream.cancel()                                         # a client that went away frees its slot

The thread sleeps while there is no work; `submit` wakes it. Token ids reach each caller through its own
queue (a plain queue for threads, an asyncio queue fed with `call_soon_threadsafe` for coroutines, so an
event loop never blocks on the model).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from typing import Sequence

from tuneforge.infer.batching import BatchDecoder, DecodeRequest

_END = object()


class Overloaded(RuntimeError):
    """More requests are waiting than the worker accepts."""


class TokenStream:
    """The token ids of one request as they are generated; `finish_reason` once it ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None):
        self.loop = loop
        self.items: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self.request: DecodeRequest | None = None
        self.error: BaseException | None = None

    def _put(self, item) -> None:  # decode thread
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.items.put_nowait, item)
            except RuntimeError:  # the caller's event loop is closed: nobody reads any more
                if self.request is not None:
                    self.request.cancelled = True
        else:
            self.items.put(item)

    @property
    def finish_reason(self) -> str | None:
        return self.request.finish_reason if self.request is not None else None

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancelled = True

    def __iter__(self):
        while True:
            item = self.items.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    async def __aiter__(self):
        while True:
            item = await self.items.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item


class BatchWorker:
    def __init__(self, engine, max_batch: int = 8, max_waiting: int = 64):
        self.engine = engine
        self.decoder = BatchDecoder(engine, max_batch=max_batch)
        self.max_waiting = max_waiting
        self._streams: dict[int, TokenStream] = {}
        self._alone: deque[DecodeRequest] = deque()  # image prompts (submit_images), decoded one at a time
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tuneforge-decode", daemon=True)
        self._thread.start()

    @property
    def load(self) -> tuple[int, int]:
        """(sequences being decoded, requests waiting)."""
        return len(self.decoder.active), len(self.decoder.waiting)

    def submit(self, prompt_ids: Sequence[int], settings=None, *,
               loop: asyncio.AbstractEventLoop | None = None) -> TokenStream:
        stream = TokenStream(loop)
        with self._wake:
            if self._closed:
                raise RuntimeError("the decode worker is closed")
            if len(self.decoder.waiting) >= self.max_waiting:
                raise Overloaded(f"{len(self.decoder.waiting)} requests are already waiting (limit {self.max_waiting})")
            request = self.decoder.add(prompt_ids, settings, on_token=stream._put)
            stream.request = request
            self._streams[id(request)] = stream
            self._wake.notify()
        return stream

    def submit_images(self, prompt_ids: Sequence[int], pixels: dict, settings=None, *,
                      loop: asyncio.AbstractEventLoop | None = None) -> TokenStream:
        """A vision-language prompt (its image tokens in `prompt_ids`, their `pixels`): decoded on its own, between
        the batch's steps (the batched step's positions are plain ones, an image's are not)."""
        stream = TokenStream(loop)
        settings = settings or self.engine.settings
        request = DecodeRequest(list(prompt_ids), settings, stream._put, pixels=pixels)
        request.budget = settings.new_token_budget(len(request.prompt_ids))
        with self._wake:
            if self._closed:
                raise RuntimeError("the decode worker is closed")
            if len(self.decoder.waiting) + len(self._alone) >= self.max_waiting:
                raise Overloaded(f"{len(self.decoder.waiting) + len(self._alone)} requests are already waiting "
                                 f"(limit {self.max_waiting})")
            stream.request = request
            self._streams[id(request)] = stream
            self._alone.append(request)
            self._wake.notify()
        return stream

    def _decode_alone(self, request: DecodeRequest) -> None:
        from tuneforge.infer.vision_chat import clear_rope_offset

        clear_rope_offset(self.engine.model)
        tokens = self.engine._decode_ids(request.prompt_ids, request.settings, request.pixels)
        try:
            for token in tokens:
                if request.cancelled:
                    request.finish_reason = "cancelled"
                    return
                request.generated.append(token)
                request.on_token(token)
            request.finish_reason = "length" if len(request.generated) >= request.budget else "stop"
        finally:
            tokens.close()
            clear_rope_offset(self.engine.model)  # the batch's text prompts decode from plain positions

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self.decoder.idle and not self._alone and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                alone = self._alone.popleft() if self._alone else None
            try:
                if alone is not None:
                    self._decode_alone(alone)
                finished = [alone] if alone is not None else self.decoder.step()
            except BaseException as err:  # noqa: BLE001 -- every waiting caller must hear of it, then go on
                self._fail_all(err, alone)
                continue
            for request in finished:
                stream = self._streams.pop(id(request), None)
                if stream is not None:
                    stream._put(_END)

    def _fail_all(self, err: BaseException, alone: DecodeRequest | None = None) -> None:
        with self._wake:
            if alone is not None:  # an image prompt failed alone: the batch goes on
                requests = [alone]
            else:
                requests = list(self.decoder.active) + list(self.decoder.waiting)
                self.decoder = BatchDecoder(self.engine, max_batch=self.decoder.max_batch)
        for request in requests:
            request.finish_reason = request.finish_reason or "error"
            stream = self._streams.pop(id(request), None)
            if stream is not None:
                stream.error = err
                stream._put(_END)
