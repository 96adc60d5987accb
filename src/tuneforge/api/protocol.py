"""The OpenAI chat-completions request, checked, and turned into what the template encodes.

Roles as in OpenAI's API and LLaMA-Factory's `api`: an optional first `system` message; `user`;
`assistant` (text, or `tool_calls`: encoded as the template's function-call turn); `tool` (a tool's
result: the template's observation turn). Content is a string or a list of text parts, and for a
vision-language model also `image_url` parts in user messages (data: URLs only). Anything else -- an unknown
role, an image for a text model, a field this server does not implement -- is refused with a 400 naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered with `status` and `message` (OpenAI's error body)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients add e.g. `refusal`, `annotations` on replies
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionTool(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionTool


class ChatCompletionRequest(BaseModel):
    # an unknown field is refused, not silently ignored: the caller learns the server does not honour it
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage]
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none"] | None = None  # "required" / a named function: not supported yet (400)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None  # an end-user id for the caller's own records; not used for decoding
    # accepted at their "off" value only (tuneforge has no presence/frequency penalty)
    presence_penalty: float | None = Field(default=None, ge=0, le=0)
    frequency_penalty: float | None = Field(default=None, ge=0, le=0)


class ScoreRequest(BaseModel):
    """LLaMA-Factory's `POST /v1/score/evaluation`: raw texts (a prompt and its answer, already rendered),
    each scored at its last token by a reward model (`stage: rm` output); `max_length` cuts them."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[str] = Field(min_length=1)
    max_length: int | None = Field(default=None, ge=1)


def text_of(message: ChatMessage, index: int, images: list[bytes] | None = None, image_tag: str = "") -> str:
    """A message's text; with `images` (a vision-language model, user messages) an `image_url` part adds its image
    to `images` and `image_tag` where it stands."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") == "image_url" and images is not None:
            images.append(image_bytes(part, index))
            texts.append(image_tag)
            continue
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{index}].content: only text parts are supported (found a "
                                f"{part.get('type')!r} part); image_url parts go in user messages to a served "
                                "vision-language model (Qwen-VL)", param="messages")
        texts.append(part["text"])
    return "".join(texts)


def image_bytes(part: dict, index: int) -> bytes:
    """An `image_url` part's image: only `data:image/...;base64,` URLs (the server never fetches a URL or reads
    a file a request names)."""
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    head, _, data = str(url or "").partition(",")
    if not (head.startswith("data:image/") and head.endswith(";base64")):
        raise ApiError(400, f"messages[{index}].content: an image_url must be a data:image/...;base64, URL (tuneforge's "
                            "API never fetches URLs or reads files a request names)", param="messages")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ApiError(400, f"messages[{index}].content: the image_url's base64 data does not decode",
                       param="messages") from None


def to_template_messages(messages: list[ChatMessage], image_tag: str | None = None,
                         images: list[bytes] | None = None) -> tuple[str | None, list[dict[str, str]]]:
    """(system prompt or None, template messages with roles user/assistant/function/observation). With
    `image_tag` (a vision-language model) the user messages' images go to `images`, `image_tag` in their text."""
    system = None
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        role = message.role
        if role in ("system", "developer"):
            if index != 0:
                raise ApiError(400, f"messages[{index}]: a system message must come first", param="messages")
            system = text_of(message, index)
        elif role == "user":
            collect = images if image_tag is not None else None
            out.append({"role": "user", "content": text_of(message, index, collect, image_tag or "")})
        elif role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError:
                    raise ApiError(400, f"messages[{index}].tool_calls: arguments of {call.function.name!r} are "
                                        "not valid JSON", param="messages") from None
                calls.append({"name": call.function.name, "arguments": arguments})
            out.append({"role": "function", "content": json.dumps(calls, ensure_ascii=False)})
        elif role == "assistant":
            out.append({"role": "assistant", "content": text_of(message, index)})
        elif role in ("tool", "function"):
            out.append({"role": "observation", "content": text_of(message, index)})
        else:
            raise ApiError(400, f"messages[{index}].role is {role!r}; expected one of system, user, assistant, tool",
                           param="messages")
    if not out:
        raise ApiError(400, "messages: at least one user message is needed", param="messages")
    return system, out


def tools_json(request: ChatCompletionRequest) -> str | None:
    if not request.tools or request.tool_choice == "none":
        return None
    return json.dumps([tool.function.model_dump(exclude_none=True) for tool in request.tools], ensure_ascii=False)
