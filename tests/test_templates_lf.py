"""Every LLaMA-Factory chat template, rendered by tuneforge exactly as LLaMA-Factory's own code renders it.

The reference, tests/data/lf_template_renderings.json, is written by tests/data/make_lf_template_renderings.py
from LF's `llamafactory.data.template` (v0.9.5; v0.9.4 for the names 0.9.5 dropped). It holds *segments*:
each string LF tokenizes on its own, plus {"token": t} for a token inserted by id and {"special": ...} for
the tokenizer's bos/eos. Equal segments mean equal text and equal ids under every tokenizer; the ids
through real tokenizers are checked as well (the conftest tokenizer, and SmolLM2's when it is cached).
"""

from __future__ import annotations

import importlib.util

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tuneforge.data.templates import available_templates, get_template
from tuneforge.data.templates.tools import SUPPORTED_TOOL_FORMATS
from tuneforge.errors import ModelError, NotSupportedError

DATA = json.loads((Path(__file__).parent / "data" / "lf_template_renderings.json").read_text(encoding="utf-8"))
LF = DATA["templates"]
BUILTIN = json.loads(
    (Path(__file__).parents[1] / "src/tuneforge/data/templates/builtin.json").read_text(encoding="utf-8")
)
BOS, EOS = "<s>", "</s>"


def _generator():
    """tests/data/make_lf_template_renderings.py, whose stand-in tokenizer made the renderings (no LF import)."""
    path = Path(__file__).parent / "data" / "make_lf_template_renderings.py"
    spec = importlib.util.spec_from_file_location("make_lf_template_renderings", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


StandInTokenizer = _generator().StandInTokenizer


def cases_of(name: str) -> tuple[dict, list[dict]]:
    """(the LF entry whose cases these are, the cases) -- 'same_cases_as' points at an identical rendering."""
    owner = LF[LF[name].get("same_cases_as", name)]
    return owner, owner["cases"]


def conversation(case: dict, owner: dict) -> list[dict[str, str]]:
    start, end = owner["thought_words"]
    return [
        {**m, "content": m["content"].replace("<think>", start).replace("</think>", end)}
        for m in DATA["conversations"][case["conversation"]]
    ]


def flat(pairs) -> list:
    return [seg for prompt, response in pairs for seg in prompt + response]


def as_text(segments) -> str:
    def one(seg):
        if isinstance(seg, str):
            return seg
        if "token" in seg:
            return seg["token"]
        return BOS if seg["special"] == "bos_token" else EOS

    return "".join(map(one, segments))


def template_for_case(name: str, case: dict, tokenizer=None):
    template = get_template(name, tokenizer, enable_thinking=case.get("enable_thinking", True))
    if case.get("preserve_thinking"):
        template = dataclasses.replace(template, preserve_thinking=True)
    return template


def label(case: dict) -> str:
    return json.dumps({k: v for k, v in case.items() if k not in ("multiturn", "oneturn", "prompt", "text")})


# ------------------------------------------------------------------ names
def test_every_llamafactory_template_is_shipped():
    assert len(LF) == 140
    assert set(LF) <= set(available_templates())
    assert BUILTIN["llamafactory_templates_not_shipped"] == []
    # the LF templates with a multimodal plugin: shipped for text, listed as multimodal
    assert BUILTIN["llamafactory_multimodal_templates"] == sorted(n for n, e in LF.items() if e["mm_plugin"])
    assert {"qwen3_5", "gemma3", "gemma4", "llava", "qwen2_vl"} <= set(BUILTIN["llamafactory_multimodal_templates"])


# ------------------------------------------------------------------ segments (text and tokenization boundaries)
@pytest.mark.parametrize("name", sorted(LF))
def test_same_segments_as_llamafactory(name):
    owner, cases = cases_of(name)
    tok = StandInTokenizer()
    for case in cases:
        template = template_for_case(name, case)
        messages = conversation(case, owner)
        system = case["system"]
        tools = DATA["tools"] if case.get("tools") else None
        discard = case.get("discarding_history_cot", False)
        pairs = template.encode_multiturn(tok, messages, system, tools, discarding_history_cot=discard)
        assert [[p, r] for p, r in pairs] == case["multiturn"], label(case)
        if discard:
            continue
        want_history = flat(case["multiturn"][:-1]) + case["multiturn"][-1][0]
        want_oneturn = case.get("oneturn", [want_history, case["multiturn"][-1][1]])
        assert list(template.encode_oneturn(tok, messages, system, tools)) == want_oneturn, label(case)
        want_prompt = case.get("prompt", want_history)
        assert template.encode_prompt(tok, messages[:-1], system, tools) == want_prompt, label(case)
        # the text API gives the same strings
        text = template.render_text(messages, system, tools, bos_token=BOS, eos_token=EOS)
        assert text == as_text(flat(case["multiturn"])), label(case)
        prompt_text = template.render_text(
            messages[:-1], system, tools, bos_token=BOS, eos_token=EOS, add_generation_prompt=True
        )
        assert prompt_text == as_text(want_prompt), label(case)
        if "text" in case:
            assert text == case["text"]


@pytest.mark.parametrize("name", sorted(LF))
def test_template_settings_as_llamafactory(name):
    """What does not show in a rendering: stop words, eos handling, thought words, tool formats."""
    lf = LF[name]
    template = get_template(name, None)
    assert template.stop_words == tuple(lf["stop_words"])
    assert template.replace_eos == lf["replace_eos"] and template.efficient_eos == lf["efficient_eos"]
    assert template.default_system == lf["default_system"]
    assert template.reasoning == lf["reasoning"]
    assert template.system_in_first_user == (lf["class"] == "Llama2Template")
    assert template.thought_words == tuple(lf["thought_words"])
    if lf["reasoning"]:
        assert template.empty_thought == lf["empty_thought"]
    assert template.tool_format == lf["function_tool_format"]
    if lf["format_tools"] is None:
        assert template.tool_format == lf["tool_format"] and template.format_tools == ()


@pytest.mark.parametrize(
    "name", sorted(n for n, e in LF.items() if e["function_tool_format"] not in SUPPORTED_TOOL_FORMATS)
)
def test_tool_formats_tuneforge_lacks_are_refused(name):
    """Never a silently different tool rendering: tools and tool calls raise for these templates."""
    template = get_template(name, None)
    tool_conv = DATA["conversations"]["tools"]
    with pytest.raises(NotSupportedError, match=LF[name]["function_tool_format"]):
        template.render_text(DATA["conversations"]["plain"], None, DATA["tools"], bos_token=BOS, eos_token=EOS)
    with pytest.raises(NotSupportedError, match=LF[name]["function_tool_format"]):
        template.render_text(tool_conv, bos_token=BOS, eos_token=EOS)


# ------------------------------------------------------------------ reasoning templates: enable_thinking both ways
REASONING = sorted(n for n, e in LF.items() if e["reasoning"])


def test_reasoning_families_present():
    assert {"qwen3", "qwen3_5", "qwen3_6", "deepseekr1", "gpt_oss", "glm4_7", "gemma4", "seed_oss", "hy3"} <= set(
        REASONING
    )


@pytest.mark.parametrize("name", REASONING)
def test_enable_thinking_both_ways(name):
    owner, cases = cases_of(name)
    thinking = {c["enable_thinking"] for c in cases}
    assert {True, False} <= thinking
    plain = {c["enable_thinking"]: c for c in cases if c["conversation"] == "plain" and c["system"] is None}
    empty = LF[name]["empty_thought"]
    on, off = plain[True]["multiturn"][0], plain[False]["multiturn"][0]
    # LF: thinking -> the empty thought starts the (trained) response; not thinking -> it ends the prompt
    assert on[1][0] == empty and off[0][-1] == empty and off[1][0] != empty
    tok = StandInTokenizer()
    for value in (True, False):
        template = get_template(name, None, enable_thinking=value)
        pairs = template.encode_multiturn(tok, conversation(plain[value], owner), None)
        assert [[p, r] for p, r in pairs] == plain[value]["multiturn"]


# ------------------------------------------------------------------ ids through real tokenizers
def lf_ids(tokenizer, segments) -> list[int]:
    """LF's Template._convert_elements_to_ids applied to the reference segments."""
    ids = []
    for seg in segments:
        if isinstance(seg, str):
            ids += tokenizer.encode(seg, add_special_tokens=False)
        elif "token" in seg:
            ids.append(tokenizer.convert_tokens_to_ids(seg["token"]))
        else:
            special = getattr(tokenizer, f"{seg['special']}_id")
            ids += [special] if special is not None else []
    return ids


@pytest.mark.parametrize("name", sorted(LF))
def test_ids_with_the_test_tokenizer(name, tiny_tokenizer):
    owner, cases = cases_of(name)
    case = cases[0]  # plain conversation with a system prompt
    assert case["conversation"] == "plain" and case["system"] is not None
    template = template_for_case(name, case, tiny_tokenizer)
    messages = conversation(case, owner)
    vocab = tiny_tokenizer.get_vocab()
    missing = {s["token"] for s in flat(case["multiturn"]) if isinstance(s, dict) and "token" in s} - set(vocab)
    if missing:  # LF would insert the unk id; tuneforge says which token the vocabulary lacks
        with pytest.raises(ModelError, match="vocabulary lacks"):
            template.encode_multiturn(tiny_tokenizer, messages, case["system"])
        return
    pairs = template.encode_multiturn(tiny_tokenizer, messages, case["system"])
    want = [(lf_ids(tiny_tokenizer, p), lf_ids(tiny_tokenizer, r)) for p, r in case["multiturn"]]
    assert pairs == want


def _demo_tokenizer_dir() -> Path | None:
    from tuneforge.model.demo import demo_model_dir

    folder = demo_model_dir()
    return folder if (folder / "tokenizer.json").is_file() else None


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    folder = _demo_tokenizer_dir()
    if folder is None:
        pytest.skip("SmolLM2 demo tokenizer not in the cache (built by `tuneforge` on first demo use)")
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("name", sorted(DATA["real_tokenizer"]))
def test_ids_with_smollm2_tokenizer_as_llamafactory(name, smollm2_tokenizer):
    """LF's get_template_and_fix_tokenizer + encode_* ids, with the real SmolLM2 tokenizer (eos replaced, stop
    words added as LF does)."""
    for case in DATA["real_tokenizer"][name]:
        tok = copy.deepcopy(smollm2_tokenizer)
        template = get_template(name, tok, enable_thinking=case["enable_thinking"])
        template.fix_tokenizer(tok)
        assert (tok.eos_token_id, len(tok)) == (case["eos_token_id"], case["vocab_size"])
        pairs = template.encode_multiturn(tok, DATA["conversations"]["plain"], case["system"])
        assert [[p, r] for p, r in pairs] == case["multiturn"], (case["enable_thinking"], case["system"])
        oneturn = template.encode_oneturn(tok, DATA["conversations"]["plain"], case["system"])
        assert list(oneturn) == case["oneturn"]
