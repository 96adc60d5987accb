"""Chat templates: golden renderings (checked against LLaMA-Factory), token ids, auto, errors.

Every LLaMA-Factory template is compared with renderings made by LF's own code in test_templates_lf.py;
the GOLDEN strings here are a readable sample of them.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tuneforge.data.formats import Message
from tuneforge.data.templates import (
    JinjaTemplate,
    TemplateError,
    available_templates,
    check_template_matches,
    get_template,
)
from tuneforge.errors import ConfigError, DataError, NotSupportedError

IM_START, IM_END, ENDOFTEXT = 1, 2, 0  # ids of the fixture tokenizer's special tokens

SYSTEM = "You are terse."
CONV = [
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", "What is 2+2?"),
    Message("assistant", "4"),
]

_IM_WITH_SYSTEM = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
)

# name -> (rendering with SYSTEM, rendering without a system prompt when the template has a default one)
# bos_token="<s>", eos_token="</s>". Every string was compared with LLaMA-Factory 0.9.4's token ids; the
# thinking families below (qwen3_5, gpt_oss, glm4_7, gemma4, seed_oss) with LF 0.9.5's (enable_thinking on).
GOLDEN = {
    "qwen": (
        _IM_WITH_SYSTEM,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    ),
    "qwen3": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\n4<|im_end|>\n",
        None,
    ),
    "qwen3_nothink": (_IM_WITH_SYSTEM, None),
    "chatml": (_IM_WITH_SYSTEM, None),
    "smollm": (_IM_WITH_SYSTEM, None),
    "yi": (_IM_WITH_SYSTEM, None),
    "smollm2": (
        _IM_WITH_SYSTEM,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    ),
    "llama3": (
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "Hello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
        None,
    ),
    "llama2": (
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST]Hello!</s><s>[INST] What is 2+2? [/INST]4</s>",
        None,
    ),
    "mistral": ("<s>[INST] You are terse.\n\nHi[/INST] Hello!</s>[INST] What is 2+2?[/INST] 4</s>", None),
    "default": (
        "System: You are terse.</s>\nHuman: Hi</s>\nAssistant:Hello!</s>\nHuman: What is 2+2?</s>\nAssistant:4</s>\n",
        None,
    ),
    "alpaca": (
        "You are terse.### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n"
        "### Instruction:\nWhat is 2+2?\n\n### Response:\n4</s>\n\n",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n4</s>\n\n",
    ),
    "empty": ("You are terse.HiHello!What is 2+2?4", None),
    "gemma": (
        "<s><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
        None,
    ),
    "glm4": (
        "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi<|assistant|>\nHello!<|user|>\nWhat is 2+2?<|assistant|>\n4",
        None,
    ),
    "deepseek3": (
        "<s>You are terse.<｜User｜>Hi<｜Assistant｜>Hello!</s><｜User｜>What is 2+2?<｜Assistant｜>4</s>",
        None,
    ),
    "phi4": (
        "<|im_start|>system<|im_sep|>You are terse.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Hello!<|im_end|><|im_start|>user<|im_sep|>What is 2+2?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>4<|im_end|>",
        None,
    ),
    "vicuna": (
        "You are terse.USER: Hi ASSISTANT:Hello!</s>USER: What is 2+2? ASSISTANT:4</s>",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.USER: Hi ASSISTANT:Hello!</s>USER: What is 2+2? "
        "ASSISTANT:4</s>",
    ),
    "qwen3_5": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\n4<|im_end|>\n",
        None,
    ),
    "gpt_oss": (  # LF 0.9.5 dropped the <|end|> after an assistant message (0.9.4 had it)
        "<|start|>system<|message|>You are terse.<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant"
        "<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>Hello!"
        "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>analysis<|message|><|end|>"
        "<|start|>assistant<|channel|>final<|message|>4",
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.<|end|>"
        "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>analysis<|message|><|end|><|start|>assistant"
        "<|channel|>final<|message|>Hello!<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant"
        "<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>4",
    ),
    "glm4_7": (  # the empty thought is only the closing tag
        "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi<|assistant|></think>\nHello!<|user|>\nWhat is 2+2?"
        "<|assistant|></think>\n4",
        None,
    ),
    "gemma4": (
        "<s><|turn>system\n<|think|>You are terse.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
        "<|channel>thought\n<channel|>Hello!<turn|>\n<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n"
        "<|channel>thought\n<channel|>4<turn|>\n",
        "<s><|turn>system\n<|think|>You are a helpful assistant.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
        "<|channel>thought\n<channel|>Hello!<turn|>\n<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n"
        "<|channel>thought\n<channel|>4<turn|>\n",
    ),
    "seed_oss": (
        "<s>system\nYou are terse.</s><s>user\nHi</s><s>assistant\n<seed:think></seed:think>Hello!</s>"
        "<s>user\nWhat is 2+2?</s><s>assistant\n<seed:think></seed:think>4</s>",
        None,
    ),
    "zephyr": (
        "<|system|>\nYou are terse.</s><|user|>\nHi</s><|assistant|>\nHello!</s><|user|>\nWhat is 2+2?</s>"
        "<|assistant|>\n4</s>",
        "<|system|>\nYou are Zephyr, a helpful assistant.</s><|user|>\nHi</s><|assistant|>\nHello!</s>"
        "<|user|>\nWhat is 2+2?</s><|assistant|>\n4</s>",
    ),
}


def enc(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture
def fresh_tokenizer(tiny_tokenizer_dir):
    """A tokenizer this test may modify (fix_tokenizer adds tokens)."""
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# ------------------------------------------------------------------ golden renderings
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_rendering(name):
    template = get_template(name, None)
    with_system, default_system_text = GOLDEN[name]
    assert template.render_text(CONV, SYSTEM, bos_token="<s>", eos_token="</s>") == with_system
    no_system = template.render_text(CONV, bos_token="<s>", eos_token="</s>")
    if template.default_system:
        assert no_system == default_system_text
    else:
        assert default_system_text is None
        assert SYSTEM not in no_system


def test_system_only_on_first_turn_and_dict_messages():
    as_dicts = [{"role": m.role, "content": m.content} for m in CONV]
    text = get_template("chatml", None).render_text(as_dicts, SYSTEM, bos_token=None, eos_token=None)
    assert text == _IM_WITH_SYSTEM and text.count("system") == 1


def test_generation_prompt_text():
    t = get_template("llama3", None)
    text = t.render_text(CONV[:3], SYSTEM, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    assert text.endswith("What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # without a tokenizer bos, the bos slot renders nothing (LF skips it when bos_token_id is None)
    assert t.render_text(CONV[:1], bos_token=None, eos_token=None, add_generation_prompt=True).startswith("<|start")


def test_all_required_templates_shipped():
    required = "qwen qwen3 qwen3_nothink llama3 llama2 mistral chatml default alpaca empty smollm smollm2 gemma glm4 deepseek3 phi4 yi vicuna zephyr"
    thinking = "qwen3_5 qwen3_5_nothink qwen3_6 deepseekr1 gpt_oss glm4_7 gemma4 seed_oss"
    assert set(required.split()) | set(thinking.split()) <= set(available_templates())


# ------------------------------------------------------------------ token ids (LF semantics)
def test_chatml_ids_exactly_as_llamafactory(tiny_tokenizer):
    tok = tiny_tokenizer
    pairs = get_template("chatml", tok).encode_multiturn(tok, CONV, SYSTEM)
    # each slot string is tokenized on its own: system slot, then user slot
    assert pairs[0][0] == enc(tok, "<|im_start|>system\nYou are terse.<|im_end|>\n") + enc(
        tok, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert pairs[0][0][0] == IM_START
    assert pairs[0][1] == enc(tok, "Hello!") + [IM_END] + enc(tok, "\n")
    assert pairs[1][0] == enc(tok, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert pairs[1][1] == enc(tok, "4") + [IM_END] + enc(tok, "\n")
    prompt, response = get_template("chatml", tok).encode_oneturn(tok, CONV, SYSTEM)
    assert prompt == pairs[0][0] + pairs[0][1] + pairs[1][0] and response == pairs[1][1]
    assert get_template("chatml", tok).encode_prompt(tok, CONV[:3], SYSTEM) == prompt


def test_bos_prefix_only_in_first_prompt(tiny_tokenizer):
    tok = tiny_tokenizer  # bos is <|endoftext|> (id 0)
    pairs = get_template("llama3", tok).encode_multiturn(tok, CONV)
    assert pairs[0][0][0] == ENDOFTEXT and ENDOFTEXT not in pairs[0][0][1:]
    assert ENDOFTEXT not in pairs[1][0]
    # llama2: bos is part of every user slot
    pairs = get_template("llama2", tok).encode_multiturn(tok, CONV)
    assert pairs[0][0][0] == ENDOFTEXT and pairs[1][0][0] == ENDOFTEXT


def test_eos_slots_and_efficient_eos(tiny_tokenizer):
    tok = tiny_tokenizer  # eos is <|im_end|> (id 2)
    pairs = get_template("default", tok).encode_multiturn(tok, CONV)
    assert pairs[0][0] == enc(tok, "Human: Hi") + [IM_END] + enc(tok, "\nAssistant:")
    assert pairs[0][1] == enc(tok, "Hello!") + [IM_END] + enc(tok, "\n")
    vicuna = get_template("vicuna", tok)
    assert not vicuna.efficient_eos and vicuna.encode_multiturn(tok, CONV)[0][1] == enc(tok, "Hello!") + [IM_END]
    # efficient_eos: the default assistant slot has no eos; the encoder appends one at the very end
    for name in ("falcon", "glm4"):
        template = get_template(name, tok)
        assert template.efficient_eos
        assert all(IM_END not in response for _, response in template.encode_multiturn(tok, CONV))
    assert get_template("falcon", tok).encode_multiturn(tok, CONV)[0][1] == enc(tok, "Hello!\n")


def test_qwen3_thinking(tiny_tokenizer):
    tok = tiny_tokenizer
    empty = enc(tok, "<think>\n\n</think>\n\n")
    thinking = get_template("qwen3", tok)
    pairs = thinking.encode_multiturn(tok, CONV)
    assert pairs[0][1] == empty + enc(tok, "Hello!<|im_end|>\n")  # learned
    not_thinking = get_template("qwen3", tok, enable_thinking=False)
    pairs = not_thinking.encode_multiturn(tok, CONV)
    assert pairs[0][0][-len(empty) :] == empty and pairs[0][1] == enc(tok, "Hello!<|im_end|>\n")  # in prompt
    # an explicit thought is kept when thinking, removed when not
    with_thought = CONV[:3] + [Message("assistant", "<think>\nadd\n</think>\n\n4")]
    assert thinking.encode_multiturn(tok, with_thought)[1][1] == enc(tok, "<think>\nadd\n</think>\n\n4<|im_end|>\n")
    assert not_thinking.encode_multiturn(tok, with_thought)[1][1] == enc(tok, "4<|im_end|>\n")
    # oneturn drops thoughts of history turns; the generation prompt stops at the assistant header
    prompt, _ = thinking.encode_oneturn(
        tok, [CONV[0], Message("assistant", "<think>\nx\n</think>\n\nHello!")] + CONV[2:]
    )
    assert tok.decode(prompt).count("<think>") == 0
    assert tok.decode(thinking.encode_prompt(tok, CONV[:1])).endswith("<|im_start|>assistant\n")
    assert tok.decode(not_thinking.encode_prompt(tok, CONV[:1])).endswith("assistant\n<think>\n\n</think>\n\n")
    # qwen3_nothink adds nothing
    assert get_template("qwen3_nothink", tok).encode_multiturn(tok, CONV)[0][1] == enc(tok, "Hello!<|im_end|>\n")


def test_default_system_override(tiny_tokenizer):
    t = get_template("qwen", tiny_tokenizer, default_system="Be kind.")
    assert t.render_text(CONV[:2], bos_token=None, eos_token=None).startswith("<|im_start|>system\nBe kind.<|im_end|>")


# ------------------------------------------------------------------ tokenizer fixes and stop words
def test_fix_tokenizer_replace_eos_and_pad(fresh_tokenizer):
    tok = fresh_tokenizer
    size = len(tok)
    get_template("qwen", tok).fix_tokenizer(tok)  # eos is already <|im_end|>
    assert tok.eos_token == "<|im_end|>" and len(tok) == size
    get_template("llama3", tok).fix_tokenizer(tok)
    assert tok.eos_token == "<|eot_id|>" and tok.eos_token_id == size
    assert "<|eom_id|>" in tok.all_special_tokens and len(tok) == size + 2
    assert get_template("llama3", tok).stop_token_ids(tok) == [size, size + 1]


def test_fix_tokenizer_adds_pad(fresh_tokenizer):
    tok = fresh_tokenizer
    tok.pad_token = None
    get_template("smollm", tok).fix_tokenizer(tok)
    assert tok.pad_token == "<|im_end|>" and tok.pad_token_id == IM_END


def test_stop_token_ids(tiny_tokenizer):
    assert get_template("chatml", tiny_tokenizer).stop_token_ids(tiny_tokenizer) == [IM_END, IM_START]
    assert get_template("default", tiny_tokenizer).stop_token_ids(tiny_tokenizer) == [IM_END]


# ------------------------------------------------------------------ tools
TOOLS = json.dumps([{
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}}, "required": ["city"]},
}])  # fmt: skip
TOOL_CONV = [
    Message("user", "Weather in Paris?"),
    Message("function", json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})),
    Message("observation", '{"temp": 21}'),
    Message("assistant", "21 degrees."),
]


def test_qwen_tools_rendering():
    text = get_template("qwen", None).render_text(TOOL_CONV, None, TOOLS, bos_token="<s>", eos_token="</s>")
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\nYou are provided with function "
        "signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string", "description": "City name"}}, "required": '
        '["city"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments '
        'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n21 degrees.<|im_end|>\n"
    )


def test_default_tools_rendering():
    text = get_template("default", None).render_text(TOOL_CONV, None, TOOLS, bos_token="<s>", eos_token="</s>")
    assert text == (
        "System: You have access to the following tools:\n> Tool Name: get_weather\nTool Description: Get the "
        "weather\nTool Args:\n  - city (string, required): City name\n\nUse the following format if using a tool:"
        "\n```\nAction: tool name (one of [get_weather])\nAction Input: the input to the tool, in a JSON format "
        'representing the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n</s>\n'
        'Human: Weather in Paris?</s>\nAssistant:Action: get_weather\nAction Input: {"city": "Paris"}</s>\n'
        'Human: {"temp": 21}</s>\nAssistant:21 degrees.</s>\n'
    )


def test_unsupported_tool_format_and_bad_function_json():
    with pytest.raises(NotSupportedError, match="glm4_moe"):
        get_template("qwen", None, tool_format="glm4_moe")
    bad = [Message("user", "x"), Message("function", "not json")]
    with pytest.raises(DataError, match="function message must be JSON"):
        get_template("qwen", None).render_text(bad, bos_token=None, eos_token=None)


# ------------------------------------------------------------------ auto (tokenizer's Jinja template)
def test_auto_matches_builtin_chatml(tiny_tokenizer):
    tok = tiny_tokenizer
    auto = get_template("auto", tok)
    assert isinstance(auto, JinjaTemplate) and get_template(None, tok).name == "auto"
    assert auto.default_system == "You are a helpful assistant." and auto.stop_words == ("<|im_end|>",)
    chatml = get_template("chatml", tok, default_system="You are a helpful assistant.")
    for system in (None, SYSTEM):
        assert auto.encode_multiturn(tok, CONV, system) == chatml.encode_multiturn(tok, CONV, system)
        assert auto.encode_oneturn(tok, CONV, system) == chatml.encode_oneturn(tok, CONV, system)
        assert auto.encode_prompt(tok, CONV[:3], system) == chatml.encode_prompt(tok, CONV[:3], system)
    assert auto.encode_multiturn(tok, CONV)[0][1][-2:] == [IM_END] + enc(tok, "\n")
    assert auto.stop_token_ids(tok) == [IM_END]
    assert auto.render_text(CONV, SYSTEM) == _IM_WITH_SYSTEM


def test_auto_not_prefix_stable_names_builtin(fresh_tokenizer):
    tok = fresh_tokenizer
    tok.chat_template = "{{ messages | length }} messages\n" + tok.chat_template
    with pytest.raises(TemplateError, match=r"not prefix-stable.*template: chatml") as info:
        get_template("auto", tok).encode_multiturn(tok, CONV)
    assert isinstance(info.value, ConfigError)


def test_auto_without_chat_template(fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="has none.*template: default"):
        get_template(None, fresh_tokenizer)


def test_check_template_matches(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (
        check_template_matches(get_template("chatml", tok, default_system="You are a helpful assistant."), tok) is None
    )
    warning = check_template_matches(get_template("llama3", tok), tok)
    assert "template 'llama3' renders differently" in warning
    assert "<|start_header_id|>system" in warning and "<|im_start|>system" in warning


# ------------------------------------------------------------------ errors
def test_unknown_template_name_suggests():
    with pytest.raises(TemplateError, match=r"unknown template 'qwen2'.*did you mean 'qwen'.*available: auto, aeva"):
        get_template("qwen2", None)
    # multimodal LF templates are shipped for text-only conversations (as LF renders them without media)
    assert get_template("llava", None).render_text(CONV[:2], bos_token=None, eos_token=None).endswith("Hello!")


def test_bad_conversations():
    t = get_template("chatml", None)
    with pytest.raises(DataError, match="must be non-empty and end with an assistant"):
        t.encode_multiturn(None, CONV[:3])
    with pytest.raises(DataError, match="role 'system'"):
        t.encode_multiturn(None, [Message("system", "x"), Message("assistant", "y")])
    with pytest.raises(DataError, match="expected assistant or function"):
        t.encode_multiturn(None, [Message("user", "x"), Message("user", "y")])
