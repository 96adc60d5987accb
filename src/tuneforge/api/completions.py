"""`POST /v1/chat/completions`: request -> prompt and settings -> the batch worker -> a response or SSE stream."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from tuneforge.api.protocol import ApiError, ChatCompletionRequest, to_template_messages, tools_json
from tuneforge.api.server import ApiService, overloaded, prompt_error, sse, streaming_response
from tuneforge.errors import TuneforgeError
from tuneforge.infer.batch_worker import Overloaded

DISCONNECT_POLL_SECONDS = 0.5


async def run_completion(service: ApiService, body: ChatCompletionRequest, request):
    engine = service.engine
    vision = getattr(engine, "vision", None)
    images: list[bytes] = []
    system, messages = to_template_messages(body.messages, vision.placeholder if vision else None, images)
    tools = tools_json(body)
    try:
        pixels = None
        if images:  # a vision-language model: the images' tokens in the prompt, their pixels for its forward
            messages, pixels = image_prompt(vision, messages, images)
        prompt_ids = engine.encode_prompt(messages, system, tools)
    except TuneforgeError as err:
        raise prompt_error(err) from None
    settings = request_settings(engine, body, len(prompt_ids))
    if body.stream and body.n > 1:
        raise ApiError(400, "`stream` with `n` > 1 is not supported yet: ask for one choice per streamed request",
                       param="n")
    stop_words = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    loop = asyncio.get_running_loop()
    streams = []
    try:
        for index in range(body.n):  # sampled choices get seeds seed, seed+1, ... (the same answer n times is no use)
            choice_settings = settings if settings.seed is None or index == 0 else settings.with_overrides(seed=settings.seed + index)
            if pixels:
                streams.append(service.worker.submit_images(prompt_ids, pixels, choice_settings, loop=loop))
            else:
                streams.append(service.worker.submit(prompt_ids, choice_settings, loop=loop))
    except Overloaded as err:
        for stream in streams:
            stream.cancel()
        raise overloaded(err) from None
    reply = _Reply(service, engine, body, bool(tools), len(prompt_ids))
    if body.stream:
        return streaming_response(reply.events(streams[0], settings, stop_words))
    watcher = asyncio.create_task(_cancel_on_disconnect(request, streams))
    try:
        results = await asyncio.gather(*(collect(engine, s, settings, stop_words) for s in streams))
    finally:
        watcher.cancel()
        for stream in streams:
            stream.cancel()
    return reply.body(results)


def request_settings(engine, body: ChatCompletionRequest, prompt_len: int):
    """The engine's generation settings with the request's sampling keys; the token budget fits the context."""
    overrides: dict = {}
    if body.temperature is not None:
        overrides.update(do_sample=False) if body.temperature == 0 else overrides.update(do_sample=True,
                                                                                       temperature=body.temperature)
    if body.top_p is not None:
        overrides["top_p"] = body.top_p
    if body.seed is not None:
        overrides["seed"] = body.seed
    asked = body.max_completion_tokens or body.max_tokens
    context = engine.context_length
    room = None if context is None else context - prompt_len
    if room is not None and room <= 0:
        raise ApiError(400, f"the prompt has {prompt_len} tokens but the model's context is {context} tokens: "
                            f"{1 - room} tokens too many; shorten the messages", param="messages")
    if asked is not None and room is not None and asked > room:
        raise ApiError(400, f"the prompt ({prompt_len} tokens) + max_tokens ({asked}) exceed the model's context of "
                            f"{context} tokens by {asked - room}; lower max_tokens to at most {room}", param="max_tokens")
    if asked is not None:
        overrides["max_new_tokens"] = asked
    try:
        settings = engine.settings.with_overrides(**overrides)
        budget = settings.new_token_budget(prompt_len)
    except TuneforgeError as err:
        raise ApiError(400, str(err)) from None
    if room is not None and budget > room:
        settings = settings.with_overrides(max_new_tokens=room)
    return settings


def image_prompt(vision, messages: list[dict], images: list[bytes]) -> tuple[list[dict], dict]:
    """The messages with each image's tokens (data/media.py) and the images' pixels; the images are read from
    a temporary folder that is gone when this returns."""
    from tuneforge.infer.vision_chat import expand_images

    with tempfile.TemporaryDirectory(prefix="tuneforge-api-images-") as folder:
        files = []
        for number, data in enumerate(images):
            path = Path(folder) / f"image{number}"
            path.write_bytes(data)
            files.append(str(path))
        return expand_images(vision, messages, files)


async def collect(engine, stream, settings, stop_words) -> tuple[str, str, int]:
    """(text, finish reason, tokens generated) of one stream; a stop word ends it early."""
    assembler = engine.text_assembler(settings, stop_words)
    parts, count = [], 0
    async for token in stream:
        count += 1
        text, stopped = assembler.push(token)
        parts.append(text)
        if stopped:
            stream.cancel()
            break
    parts.append(assembler.finish())
    reason = "length" if stream.finish_reason == "length" and not assembler.stopped else "stop"
    return "".join(parts), reason, count


async def _cancel_on_disconnect(request, streams) -> None:
    while True:
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        if await request.is_disconnected():
            for stream in streams:
                stream.cancel()
            return


class _Reply:
    """OpenAI's response objects for one request."""

    def __init__(self, service: ApiService, engine, body: ChatCompletionRequest, tools: bool, prompt_tokens: int):
        self.engine, self.tools, self.prompt_tokens = engine, tools, prompt_tokens
        self.model = service.model_name
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.include_usage = bool((body.stream_options or {}).get("include_usage"))

    def _message(self, text: str, reason: str) -> tuple[dict, str]:
        calls = self.engine.parse_tool_calls(text) if self.tools else None
        if not calls:
            return {"role": "assistant", "content": text}, reason
        tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                       "function": {"name": name, "arguments": arguments}} for name, arguments in calls]
        return {"role": "assistant", "content": None, "tool_calls": tool_calls}, "tool_calls"

    def _usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def body(self, results) -> dict:
        choices = []
        for index, (text, reason, _) in enumerate(results):
            message, reason = self._message(text, reason)
            choices.append({"index": index, "message": message, "finish_reason": reason, "logprobs": None})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self._usage(sum(count for _, _, count in results))}

    def _chunk(self, delta: dict, reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]}

    async def events(self, stream, settings, stop_words):
        """The SSE stream of one choice; with tools the answer is parsed whole, then sent as one delta."""
        try:
            yield sse(self._chunk({"role": "assistant", "content": ""}))
            if self.tools:
                text, reason, count = await collect(self.engine, stream, settings, stop_words)
                message, reason = self._message(text, reason)
                delta = {"content": text} if message["content"] is not None else {
                    "tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}
                yield sse(self._chunk(delta))
            else:
                assembler, count = self.engine.text_assembler(settings, stop_words), 0
                async for token in stream:
                    count += 1
                    text, stopped = assembler.push(token)
                    if text:
                        yield sse(self._chunk({"content": text}))
                    if stopped:
                        stream.cancel()
                        break
                tail = assembler.finish()
                if tail:
                    yield sse(self._chunk({"content": tail}))
                reason = "length" if stream.finish_reason == "length" and not assembler.stopped else "stop"
            yield sse(self._chunk({}, reason))
            if self.include_usage:
                yield sse({**self._chunk({}), "choices": [], "usage": self._usage(count)})
            yield sse("[DONE]")
        finally:
            stream.cancel()  # a client that went away mid-stream frees its slot
