"""An OpenAI-compatible server on the batched decoding engine (`tuneforge api x.yaml`).

    GET  /v1/models                  the one model served
    POST /v1/chat/completions        chat; `stream` as server-sent events ending with `data: [DONE]`;
                                     `tools` -> `tool_calls` (finish_reason "tool_calls")
    POST /v1/score/evaluation        reward models (a `stage: rm` output), LLaMA-Factory's scoring route

Every request is decoded by one `BatchWorker` (continuous batching): concurrent requests share decode
steps. Errors are OpenAI's error body with a 4xx status and a message -- a malformed request 400, a
missing or wrong key 401, a context the model cannot hold 400 saying by how much, a full queue 429 --
never a traceback. A client that disconnects mid-stream cancels its sequence (its slot is freed).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from tuneforge.api.protocol import ApiError, ChatCompletionRequest, ScoreRequest
from tuneforge.errors import TuneforgeError
from tuneforge.infer.batch_worker import Overloaded

logger = logging.getLogger("tuneforge.api")


@dataclass
class ApiService:
    """What the routes use: the chat engine and its worker, or a reward scorer; the served model's name."""

    model_name: str
    engine: object = None   # ChatEngine
    worker: object = None   # BatchWorker over `engine`
    scorer: object = None   # RewardScorer


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status)


def create_app(service: ApiService, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="tuneforge API", docs_url=None, redoc_url=None)
    if api_key:
        app.add_middleware(_KeyCheck, api_key=api_key)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                             for e in err.errors())
        return _error(400, f"malformed request: {problems}")

    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        return _error(err.status, err.message, err.kind, err.param)

    @app.exception_handler(Exception)
    async def unexpected(_request, err: Exception):
        logger.exception("request failed")
        return _error(500, f"internal error: {type(err).__name__}: {err}", "server_error")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "tuneforge"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        from tuneforge.api.completions import run_completion

        if service.engine is None:
            raise ApiError(400, "this server serves a reward model: POST /v1/score/evaluation scores texts")
        return await run_completion(service, body, request)

    @app.post("/v1/score/evaluation")
    async def score(body: ScoreRequest):
        import asyncio

        if service.scorer is None:
            raise ApiError(400, "this server serves a chat model: scoring needs a reward model (a `stage: rm` output)")
        tokenizer = service.scorer.tokenizer
        sequences = [tokenizer.encode(text, add_special_tokens=False)[: body.max_length] for text in body.messages]
        if any(not ids for ids in sequences):
            raise ApiError(400, "messages: every text must have at least one token", param="messages")
        scores = await asyncio.to_thread(service.scorer.score_ids, sequences)
        return {"id": f"scoreval-{uuid.uuid4().hex}", "object": "score.evaluation", "model": service.model_name,
                "scores": scores}

    return app


class _KeyCheck:
    """Every request without `Authorization: Bearer <API_KEY>` gets 401 (plain ASGI: streams are untouched)."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and dict(scope.get("headers") or ()).get(b"authorization") != self.expected:
            response = _error(401, "missing or wrong API key: send the header `Authorization: Bearer <API_KEY>`",
                              "authentication_error")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def prompt_error(err: TuneforgeError) -> ApiError:
    return ApiError(400, f"messages: {err}", param="messages")


def overloaded(err: Overloaded) -> ApiError:
    return ApiError(429, f"the server is busy: {err}; retry later", "rate_limit_error")


def streaming_response(chunks) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
