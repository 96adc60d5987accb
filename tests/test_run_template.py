"""A run's template honours its data keys (`enable_thinking`, `tool_format`, `default_system`) on every
path: training (`workflow.load_tokenizer_and_template` + `build_datasets`) and chat (`ChatEngine.from_config`).

Golden strings follow LLaMA-Factory's `get_template_and_fix_tokenizer` + `ReasoningTemplate` / tool formats.
"""

from __future__ import annotations

import json

import pytest

from tuneforge.config.parser import load_config_dict

X = -100
TOOLS = json.dumps([{
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}}, "required": ["city"]},
}])  # fmt: skip
ROWS = [{"instruction": "Hi", "output": "Hello!"}, {"instruction": "2+2?", "output": "<think>\nadd\n</think>\n\n4"}]
TOOL_ROWS = [{"conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": '{"temp": 21}'},
    {"from": "gpt", "value": "21 degrees."},
], "tools": TOOLS}]  # fmt: skip


@pytest.fixture
def run_config(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps(ROWS))
    (data / "tools.json").write_text(json.dumps(TOOL_ROWS))
    info = {"rows": {"file_name": "rows.json"},
            "tools": {"file_name": "tools.json", "formatting": "sharegpt",
                      "columns": {"messages": "conversations", "tools": "tools"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))

    def make(**extra):
        values = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "dataset": "rows",
                  "dataset_dir": str(data), "cutoff_len": 2048, "output_dir": str(tmp_path / "out"),
                  "report_to": "none"}
        return load_config_dict({**values, **extra})

    return make


def encoded(cfg) -> list[tuple[str, str]]:
    """(whole text, trained text) of every training sample, through the training path."""
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    return [(tokenizer.decode(ids), tokenizer.decode([t for t, l in zip(ids, labels) if l != X]))
            for ids, labels in zip(bundle.train["input_ids"], bundle.train["labels"])]


def test_enable_thinking_training_path(run_config):
    head = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    head2 = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    thinking = sorted(encoded(run_config(template="qwen3")))
    assert thinking == sorted([
        (head + "<think>\n\n</think>\n\nHello!<|im_end|>\n", "<think>\n\n</think>\n\nHello!<|im_end|>\n"),  # learned
        (head2 + "<think>\nadd\n</think>\n\n4<|im_end|>\n", "<think>\nadd\n</think>\n\n4<|im_end|>\n"),  # kept
    ])
    not_thinking = sorted(encoded(run_config(template="qwen3", enable_thinking=False)))
    assert not_thinking == sorted([
        (head + "<think>\n\n</think>\n\nHello!<|im_end|>\n", "Hello!<|im_end|>\n"),  # empty thought in the prompt
        (head2 + "<think>\n\n</think>\n\n4<|im_end|>\n", "4<|im_end|>\n"),  # the chain of thought removed
    ])


def test_enable_thinking_chat_path(run_config):
    from tuneforge.infer.engine import ChatEngine

    prompts = {}
    for flag in (True, False):
        engine = ChatEngine.from_config(run_config(template="qwen3", enable_thinking=flag))
        prompts[flag] = engine.tokenizer.decode(engine.encode_prompt([{"role": "user", "content": "Hi"}]))
    assert prompts[True] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[False] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_default_system_reaches_chat_template(run_config):
    from tuneforge.infer.engine import ChatEngine

    engine = ChatEngine.from_config(run_config(template="qwen", default_system="Be brief."))
    assert engine.template.default_system == "Be brief."


_QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_DEFAULT_TOOL_TEXT = (
    "You have access to the following tools:\n> Tool Name: get_weather\nTool Description: Get the weather\n"
    "Tool Args:\n  - city (string, required): City name\n\nUse the following format if using a tool:\n```\n"
    "Action: tool name (one of [get_weather])\nAction Input: the input to the tool, in a JSON format representing "
    'the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
)


def test_tool_format_training_path(run_config):
    (qwen_text, qwen_trained), = encoded(run_config(template="qwen", dataset="tools"))
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' \
           '</tool_call><|im_end|>\n' in qwen_text  # the template's own (qwen) tool format
    (text, trained), = encoded(run_config(template="qwen", dataset="tools", tool_format="default"))
    # LF: tools described in the `default` format after the system prompt; the function slot becomes
    # "{{content}}" + eos (no newline after it, as in LLaMA-Factory)
    assert text == (
        _QWEN_SYSTEM + _DEFAULT_TOOL_TEXT + "<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\nAction: get_weather\nAction Input: {"city": "Paris"}<|im_end|>'
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n21 degrees.<|im_end|>\n"
    )
    assert trained == 'Action: get_weather\nAction Input: {"city": "Paris"}<|im_end|>21 degrees.<|im_end|>\n'


def test_tool_format_with_auto_template_is_refused(run_config):
    from tuneforge.errors import NotSupportedError
    from tuneforge.train import workflow

    with pytest.raises(NotSupportedError, match="tool_format"):
        workflow.load_tokenizer_and_template(run_config(dataset="tools", tool_format="default"))
