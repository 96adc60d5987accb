"""Tool descriptions and function calls rendered the way LLaMA-Factory's tool formats do.

Two entry points, both pure text -> text:

- :func:`format_tool_prompt` turns the ``tools`` column (a JSON list of function schemas) into the text
  that is appended to the system prompt;
- :func:`format_function_calls` turns a ``function`` message (JSON ``{"name", "arguments"}`` or a list
  of them) into the assistant text that calls the tools.

Formats implemented: ``default``, ``qwen``, ``glm4``, ``mistral``, ``llama3``. Any other LLaMA-Factory
tool format raises :class:`~tuneforge.errors.NotSupportedError` naming it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from tuneforge.errors import DataError, NotSupportedError

SUPPORTED_TOOL_FORMATS = ("default", "qwen", "glm4", "mistral", "llama3")
_KNOWN_LF_TOOL_FORMATS = ("glm4_moe", "minimax1", "minimax2", "seed_oss", "ling", "lfm")

_DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n'
    "```\n"
)
_QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, '
    '"arguments": <args-json-object>}}\n</tool_call>'
)
_GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)
_LLAMA3_TOOL_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    'Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. '
    "Do not use variables.\n\n{tool_text}"
)


def check_tool_format(tool_format: str) -> None:
    if tool_format in SUPPORTED_TOOL_FORMATS:
        return
    if tool_format in _KNOWN_LF_TOOL_FORMATS:
        raise NotSupportedError(
            f"tool format '{tool_format}' (LLaMA-Factory) is not supported yet; "
            f"supported tool formats: {', '.join(SUPPORTED_TOOL_FORMATS)}"
        )
    raise NotSupportedError(
        f"unknown tool format '{tool_format}'; expected one of: {', '.join(SUPPORTED_TOOL_FORMATS)}"
    )


def _unwrap(tool: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style ``{"type": "function", "function": {...}}`` -> the inner schema."""
    return tool.get("function", "") if tool.get("type") == "function" else tool


def _wrap(tool: dict[str, Any]) -> dict[str, Any]:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _default_tool_text(tools: list[dict[str, Any]]) -> str:
    tool_text, tool_names = "", []
    for tool in map(_unwrap, tools):
        param_text = ""
        params = tool["parameters"]
        for name, param in params["properties"].items():
            required = ", required" if name in params.get("required", []) else ""
            enum = ", should be one of [{}]".format(", ".join(map(str, param["enum"]))) if param.get("enum") else ""
            items = (
                ", where each item should be {}".format(param["items"].get("type", "")) if param.get("items") else ""
            )
            param_text += (
                f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
            )
        tool_text += (
            f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{param_text}\n"
        )
        tool_names.append(tool["name"])
    return _DEFAULT_TOOL_PROMPT.format(tool_text=tool_text, tool_names=", ".join(tool_names))


def _tool_text(tool_format: str, tools: list[dict[str, Any]]) -> str:
    if tool_format == "default":
        return _default_tool_text(tools)
    if tool_format == "qwen":
        return _QWEN_TOOL_PROMPT.format(
            tool_text="".join("\n" + json.dumps(_wrap(t), ensure_ascii=False) for t in tools)
        )
    if tool_format == "glm4":
        text = "".join(
            f"\n\n## {t['name']}\n\n{json.dumps(t, indent=4, ensure_ascii=False)}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
            for t in map(_unwrap, tools)
        )
        return _GLM4_TOOL_PROMPT.format(tool_text=text)
    if tool_format == "mistral":
        return "[AVAILABLE_TOOLS] " + json.dumps([_wrap(t) for t in tools], ensure_ascii=False) + "[/AVAILABLE_TOOLS]"
    if tool_format == "llama3":
        text = "".join(json.dumps(_wrap(t), indent=4, ensure_ascii=False) + "\n\n" for t in tools)
        return _LLAMA3_TOOL_PROMPT.format(date=datetime.now().strftime("%d %b %Y"), tool_text=text)
    check_tool_format(tool_format)
    raise AssertionError(tool_format)  # pragma: no cover - check_tool_format raised


def format_tool_prompt(tool_format: str, tools_json: str) -> str:
    """The text appended to the system prompt for the ``tools`` column ("" for an empty list)."""
    check_tool_format(tool_format)
    try:
        tools = json.loads(tools_json)
    except json.JSONDecodeError as e:
        raise DataError(f"the tools column is not valid JSON ({e}): {tools_json[:200]!r}") from None
    if not tools:
        return ""
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"the tools column must be a JSON list of function schemas, found: {tools_json[:200]!r}")
    try:
        return _tool_text(tool_format, tools)
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"a tool schema in the tools column lacks a field the '{tool_format}' tool format needs ({e!r}); "
            f"expected {{'name', 'description', 'parameters': {{'properties': ...}}}}: {tools_json[:200]!r}"
        ) from None


def load_calls(content: str) -> list:
    """A function message's JSON: one call {'name', 'arguments'} or a list of them, as a list."""
    try:
        calls = json.loads(content)
    except json.JSONDecodeError:
        raise DataError(
            f"a function message must be JSON {{'name', 'arguments'}} (or a list), found: {content[:200]!r}"
        ) from None
    return calls if isinstance(calls, list) else [calls]


def _parse_calls(content: str) -> list[tuple[str, str]]:
    calls = load_calls(content)
    try:
        return [(call["name"], json.dumps(call["arguments"], ensure_ascii=False)) for call in calls]
    except (KeyError, TypeError):
        raise DataError(f"a function call needs 'name' and 'arguments' keys, found: {content[:200]!r}") from None


def format_function_calls(tool_format: str, content: str, thought_words: tuple[str, str] | None = None) -> str:
    """The assistant text for a ``function`` message; a leading thought block is kept in front."""
    check_tool_format(tool_format)
    thought = None
    if thought_words and len(thought_words) == 2:
        pattern = re.compile(rf"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", re.DOTALL)
        thought = pattern.search(content)
    if thought:
        content = content.replace(thought.group(0), "")

    calls = _parse_calls(content)
    if tool_format == "default":
        text = "\n".join(f"Action: {name}\nAction Input: {args}" for name, args in calls)
    elif tool_format == "qwen":
        text = "\n".join(
            "<tool_call>\n"
            + json.dumps({"name": name, "arguments": json.loads(args)}, ensure_ascii=False)
            + "\n</tool_call>"
            for name, args in calls
        )
    elif tool_format == "glm4":
        if len(calls) > 1:
            raise DataError(f"the glm4 tool format does not support parallel function calls, found {len(calls)}")
        text = f"{calls[0][0]}\n{calls[0][1]}"
    elif tool_format == "mistral":
        text = json.dumps([{"name": n, "arguments": json.loads(a)} for n, a in calls], ensure_ascii=False)
    else:  # llama3
        objs = [{"name": n, "parameters": json.loads(a)} for n, a in calls]
        text = json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)
    return (thought.group(0) + text) if thought else text


_QWEN_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_DEFAULT_CALL = re.compile(r"Action:\s*(.+?)\s*Action Input:\s*(.*?)\s*(?=Action:|\Z)", re.DOTALL)


def extract_function_calls(tool_format: str, text: str) -> list[tuple[str, str]] | None:
    """The calls in a generated answer, the inverse of `format_function_calls`: [(name, arguments JSON)], or
    None when the text is not a well-formed call in this format (then it is a plain answer)."""
    check_tool_format(tool_format)
    text = text.strip()
    try:
        if tool_format == "default":
            found = [(name.strip(), json.loads(args)) for name, args in _DEFAULT_CALL.findall(text)]
        elif tool_format == "qwen":
            objs = [json.loads(body) for body in _QWEN_CALL.findall(text)]
            found = [(obj["name"], obj["arguments"]) for obj in objs]
        elif tool_format == "glm4":
            name, _, args = text.partition("\n")
            found = [(name.strip(), json.loads(args))] if args and name.strip() and " " not in name.strip() else []
        else:  # mistral: a JSON list (after an optional [TOOL_CALLS] marker); llama3: an object or a list
            body = text[min((i for i in (text.find("["), text.find("{")) if i >= 0), default=0):]
            objs = json.loads(body)
            objs = objs if isinstance(objs, list) else [objs]
            key = "arguments" if tool_format == "mistral" else "parameters"
            found = [(obj["name"], obj[key]) for obj in objs]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not found or not all(isinstance(name, str) and isinstance(args, dict) for name, args in found):
        return None
    return [(name, json.dumps(args, ensure_ascii=False)) for name, args in found]
