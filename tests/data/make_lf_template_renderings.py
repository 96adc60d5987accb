"""Write tests/data/lf_template_renderings.json: every LLaMA-Factory chat template rendered by LF's own code.

    python tests/data/make_lf_template_renderings.py [--repo /path/to/LLaMA-Factory(.git)] [--tokenizer DIR]

Run it with tuneforge's own interpreter (`.venv/bin/python`): LF's `data/template.py` imports torch and
transformers, which that environment has. Nothing is installed: for each tag (v0.9.5, and v0.9.4 for the
names 0.9.5 dropped) the script extracts LF's `src/` from a git checkout or bare mirror into a temporary
folder and runs itself there as a worker (`--worker`) with that folder on `PYTHONPATH`. The worker imports
`llamafactory.data.template` and renders every registered template with LF's `encode_multiturn`,
`encode_oneturn` and the generation prompt of LF's chat engine (`encode_oneturn` of the messages plus an
empty assistant turn). `torchaudio` (imported at the top of LF's `mm_plugin.py`, unused for text) is
replaced by an empty stub module.

The tokenizer is a string-level stand-in: `encode(text)` returns `[text]`, `convert_tokens_to_ids(t)`
returns `{"token": t}`, `bos_token_id`/`eos_token_id` are `{"special": "bos_token"}`/`{"special":
"eos_token"}` (bos_token "<s>", eos_token "</s>"). LF's "token ids" are then the list of *segments*
each string slot is tokenized as: the text and the tokenization boundaries, so a tokenizer that
reproduces the segments reproduces the ids of every real tokenizer.

With `--tokenizer DIR` (default: tuneforge's demo model folder, SmolLM2-135M-Instruct, when present) a
few templates are also encoded with that real tokenizer through LF's `get_template_and_fix_tokenizer`
(which adds stop words / replaces eos) and the resulting ids are stored under "real_tokenizer".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from copy import deepcopy
from pathlib import Path

DEFAULT_REPO = "/work/.mirror/hiyouga+LLaMA-Factory/repo"
TAGS = ("v0.9.5", "v0.9.4")  # the first one wins for names registered by both
OUT = Path(__file__).resolve().parent / "lf_template_renderings.json"
DEFAULT_TOKENIZER = Path.home() / ".cache" / "tuneforge" / "models" / "smollm2-135m-instruct"

SYSTEM = "You are terse."
PLAIN = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]
TOOLS = json.dumps([{
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]},
}])  # fmt: skip
TOOL_CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "function", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"role": "observation", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 degrees."},
]
# tool formats tuneforge implements; llama3's tool prompt contains today's date, so it is left out
TOOL_FORMATS_RENDERED = ("default", "qwen", "glm4", "mistral")
REAL_TOKENIZER_TEMPLATES = (
    "default", "qwen", "qwen3", "qwen3_5", "llama3", "mistral", "gemma4", "gpt_oss", "glm4_7", "seed_oss",
    "deepseekr1", "hy3",
)  # fmt: skip


# "<think>" / "</think>" stand for the template's own thought words (thought_words[0] / [1])
CONVERSATIONS = {
    "plain": PLAIN,
    "thought_first": [
        PLAIN[0], {"role": "assistant", "content": "<think>The user greets me.</think>Hello!"}, *PLAIN[2:]
    ],
    "thought_last": [*PLAIN[:3], {"role": "assistant", "content": "<think>2+2 is 4.</think>4"}],
    "tools": TOOL_CONV,
}


def conversation(name: str, thought_words) -> list[dict[str, str]]:
    start, end = thought_words
    return [
        {**m, "content": m["content"].replace("<think>", start).replace("</think>", end)} for m in CONVERSATIONS[name]
    ]


# ---------------------------------------------------------------------------------------------- worker
class StandInTokenizer:
    """Segments instead of ids (see the module docstring)."""

    bos_token, eos_token = "<s>", "</s>"
    bos_token_id = {"special": "bos_token"}
    eos_token_id = {"special": "eos_token"}
    unk_token = unk_token_id = None

    def encode(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return [text]

    def convert_tokens_to_ids(self, token):
        return {"token": token}


def _render(template, messages, system, tools, **kwargs) -> dict:
    """multiturn always; oneturn / prompt only where they differ from what the multiturn pairs imply
    (all pairs joined with the last response split off / everything before the last response)."""
    tok = StandInTokenizer()
    pairs = template.encode_multiturn(tok, deepcopy(messages), system, tools, **kwargs)
    case = {"multiturn": [[p, r] for p, r in pairs]}
    if not kwargs:
        history = [seg for p, r in pairs[:-1] for seg in p + r] + pairs[-1][0]
        prompt, response = template.encode_oneturn(tok, deepcopy(messages), system, tools)
        if [prompt, response] != [history, pairs[-1][1]]:
            case["oneturn"] = [prompt, response]
        paired = deepcopy(messages[:-1]) + [{"role": "assistant", "content": ""}]
        prompt = template.encode_oneturn(tok, paired, system, tools)[0]
        if prompt != history:
            case["prompt"] = prompt
    return case


def _text(segments) -> str:
    out = []
    for seg in segments:
        if isinstance(seg, str):
            out.append(seg)
        elif "token" in seg:
            out.append(seg["token"])
        else:
            out.append(StandInTokenizer.bos_token if seg["special"] == "bos_token" else StandInTokenizer.eos_token)
    return "".join(out)


def _slots(slots) -> list:
    out = []
    for slot in slots:
        if isinstance(slot, str):
            out.append(slot)
        elif isinstance(slot, dict):
            out.append({"token": slot["token"]})
        else:  # a set: LF only emits {"bos_token"} / {"eos_token"}; any other set renders nothing
            out.append({"special": sorted(slot)[0]})
    return out


def describe(template) -> dict:
    """LF's template object as plain data (what tuneforge's builtin.json entry has to reproduce)."""
    tools_fmt = template.format_tools
    return {
        "class": type(template).__name__,
        "mm_plugin": None if type(template.mm_plugin).__name__ == "BasePlugin" else type(template.mm_plugin).__name__,
        "format_user": _slots(template.format_user.slots),
        "format_assistant": _slots(template.format_assistant.slots),
        "format_system": _slots(template.format_system.slots),
        "format_function": _slots(template.format_function.slots),
        "format_observation": _slots(template.format_observation.slots),
        "format_prefix": _slots(template.format_prefix.slots),
        "format_tools": _slots(tools_fmt.slots) if type(tools_fmt).__name__ == "StringFormatter" else None,
        "tool_format": getattr(tools_fmt, "tool_format", None),
        "function_tool_format": template.format_function.tool_format,
        "default_system": template.default_system,
        "stop_words": list(template.stop_words),
        "thought_words": list(template.thought_words),
        "tool_call_words": list(getattr(template, "tool_call_words", ("<tool_call>", "</tool_call>"))),
        "efficient_eos": template.efficient_eos,
        "replace_eos": template.replace_eos,
        "empty_thought": template.add_thought() if hasattr(template, "add_thought") else None,
    }


def render_template(template) -> dict:
    from llamafactory.data.template import ReasoningTemplate

    reasoning = isinstance(template, ReasoningTemplate)
    info = describe(template)
    info["reasoning"] = reasoning
    cases = []

    def add(conv, system, tools=None, thinking="n/a", **kwargs):
        messages = conversation(conv, template.thought_words)
        t = deepcopy(template)
        if reasoning:
            t.enable_thinking = thinking
            for key, value in kwargs.items():
                if key == "preserve_thinking":
                    t.preserve_thinking = value
        call_kwargs = {k: v for k, v in kwargs.items() if k != "preserve_thinking"}
        case = {"conversation": conv, "system": system}
        if tools:
            case["tools"] = True
        if reasoning:
            case["enable_thinking"] = thinking
        case.update(kwargs)
        case.update(_render(t, messages, system, tools, **call_kwargs))
        if not cases:  # the first case also as plain text, for people reading this file
            case["text"] = _text(seg for pair in case["multiturn"] for part in pair for seg in part)
        cases.append(case)

    thinking_values = (True, False) if reasoning else ("n/a",)
    for thinking in thinking_values:
        add("plain", SYSTEM, thinking=thinking)
        add("plain", None, thinking=thinking)
    if reasoning:
        add("plain", SYSTEM, thinking=None)
        for name in ("thought_first", "thought_last"):
            for thinking in (True, False):
                add(name, None, thinking=thinking)
        if hasattr(template, "preserve_thinking"):  # LF >= 0.9.5
            add("thought_first", None, thinking=True, preserve_thinking=True)
            for thinking in (True, False):
                add("thought_first", None, thinking=thinking, discarding_history_cot=True)
    fmt = info["tool_format"]
    if fmt in TOOL_FORMATS_RENDERED and info["function_tool_format"] == fmt:
        add("tools", None, TOOLS, thinking=True if reasoning else "n/a")
    if info["format_tools"] is not None:  # phi4_mini: a string formatter for the tool text
        add("plain", None, TOOLS, thinking=True if reasoning else "n/a")
    info["cases"] = cases
    return info


def real_tokenizer_ids(tokenizer_dir: str, names) -> dict:
    from types import SimpleNamespace

    from llamafactory.data.template import TEMPLATES, ReasoningTemplate, get_template_and_fix_tokenizer
    from transformers import AutoTokenizer

    out = {}
    for name in names:
        if name not in TEMPLATES:
            continue
        thinking_values = (True, False) if isinstance(TEMPLATES[name], ReasoningTemplate) else (True,)
        for thinking in thinking_values:
            for system in (SYSTEM, None):
                tok = AutoTokenizer.from_pretrained(tokenizer_dir)
                args = SimpleNamespace(
                    template=name, train_on_prompt=False, tool_format=None, default_system=None,
                    enable_thinking=thinking, preserve_thinking=False,
                )  # fmt: skip
                saved = deepcopy(TEMPLATES[name])
                template = get_template_and_fix_tokenizer(tok, args)
                pairs = template.encode_multiturn(tok, deepcopy(PLAIN), system, None)
                prompt, response = template.encode_oneturn(tok, deepcopy(PLAIN), system, None)
                TEMPLATES[name] = saved  # get_template_and_fix_tokenizer changes the registered object
                out.setdefault(name, []).append({
                    "enable_thinking": thinking, "system": system, "eos_token_id": tok.eos_token_id,
                    "vocab_size": len(tok), "multiturn": [[p, r] for p, r in pairs], "oneturn": [prompt, response],
                })  # fmt: skip
    return out


def worker(out_path: str, tokenizer_dir: str | None) -> None:
    from llamafactory.data.template import TEMPLATES

    result = {"templates": {name: render_template(t) for name, t in TEMPLATES.items()}}
    if tokenizer_dir:
        result["real_tokenizer"] = real_tokenizer_ids(tokenizer_dir, REAL_TOKENIZER_TEMPLATES)
    Path(out_path).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- driver
def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def run_tag(repo: str, tag: str, tokenizer_dir: str | None, tmp: Path) -> dict:
    src = tmp / tag
    src.mkdir()
    archive = subprocess.run(["git", "-C", repo, "archive", tag, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(src)], input=archive, check=True)
    stubs = tmp / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "torchaudio.py").write_text('"""Empty stand-in: imported by LF mm_plugin.py, unused for text."""\n')
    out = tmp / f"{tag}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src / "src"), str(stubs)]))
    cmd = [sys.executable, __file__, "--worker", str(out)] + (["--tokenizer", tokenizer_dir] if tokenizer_dir else [])
    subprocess.run(cmd, check=True, env=env, cwd=tmp)
    return json.loads(out.read_text(encoding="utf-8"))


def _dump(data: dict) -> str:
    """One line per case list entry, so the file diffs and reads reasonably."""
    lines = ["{"]
    top = [k for k in data if k not in ("templates", "real_tokenizer")]
    for key in top:
        lines.append(f"  {json.dumps(key)}: {json.dumps(data[key], ensure_ascii=False)},")
    lines.append('  "templates": {')
    names = list(data["templates"])
    for i, name in enumerate(names):
        entry = data["templates"][name]
        lines.append(f"    {json.dumps(name)}: {{")
        keys = list(entry)
        for j, key in enumerate(keys):
            comma = "," if j < len(keys) - 1 else ""
            if key == "cases":
                lines.append('      "cases": [')
                for k, case in enumerate(entry["cases"]):
                    sep = "," if k < len(entry["cases"]) - 1 else ""
                    lines.append(f"        {json.dumps(case, ensure_ascii=False)}{sep}")
                lines.append(f"      ]{comma}")
            else:
                lines.append(f"      {json.dumps(key)}: {json.dumps(entry[key], ensure_ascii=False)}{comma}")
        lines.append("    }" + ("," if i < len(names) - 1 else ""))
    lines.append("  },")
    lines.append('  "real_tokenizer": {')
    names = list(data["real_tokenizer"])
    for i, name in enumerate(names):
        cases = data["real_tokenizer"][name]
        lines.append(f"    {json.dumps(name)}: [")
        for k, case in enumerate(cases):
            sep = "," if k < len(cases) - 1 else ""
            lines.append(f"      {json.dumps(case, ensure_ascii=False)}{sep}")
        lines.append("    ]" + ("," if i < len(names) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _comparable(entry: dict, only: dict | None = None) -> dict:
    """The template description and its cases by what they render (for cases rendered under both tags)."""
    out = {k: v for k, v in entry.items() if k not in ("cases", "source")}
    for case in entry["cases"]:
        key = json.dumps({k: v for k, v in case.items() if k not in ("multiturn", "oneturn", "prompt", "text")})
        if only is None or key in only:
            out[key] = case
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=DEFAULT_REPO)
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER) if DEFAULT_TOKENIZER.is_dir() else None)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.tokenizer)
        return

    with tempfile.TemporaryDirectory() as tmp:
        per_tag = {tag: run_tag(args.repo, tag, args.tokenizer if tag == TAGS[0] else None, Path(tmp)) for tag in TAGS}
    commits = {tag: git(args.repo, "rev-parse", f"{tag}^{{commit}}").strip() for tag in TAGS}

    templates, changed = {}, []
    for tag in TAGS:
        for name, entry in per_tag[tag]["templates"].items():
            if name in templates:
                if _comparable(entry) != _comparable(templates[name], only=_comparable(entry)):
                    changed.append(name)
                continue
            templates[name] = {"source": tag, **entry}
    templates = dict(sorted(templates.items()))
    first_with_cases: dict[str, str] = {}  # rendered cases -> the first template (by name) rendering them
    for name, entry in templates.items():
        key = json.dumps(entry["cases"], sort_keys=True)
        if key in first_with_cases:  # LF renders every case of this template exactly like that one
            del entry["cases"]
            entry["same_cases_as"] = first_with_cases[key]
        else:
            first_with_cases[key] = name
    data = {
        "comment": (
            "Reference renderings of every LLaMA-Factory chat template, produced by LF's own code "
            "(llamafactory.data.template) with tests/data/make_lf_template_renderings.py; do not edit by hand. "
            "Names registered in v0.9.5 come from v0.9.5, the names v0.9.5 dropped from v0.9.4 (see 'source'). "
            "Each case renders conversations[conversation] ('<think>'/'</think>' there stand for the "
            "template's thought_words) with `system` (null: the template's default), the `tools` JSON when "
            "tools is true, and for reasoning templates LF's enable_thinking / preserve_thinking / "
            "discarding_history_cot. Ids are *segments*: LF tokenizes every string slot on its own, and the "
            "stand-in tokenizer returns each string as one segment, {\"token\": t} for a special token inserted "
            "by id and {\"special\": \"bos_token\"|\"eos_token\"} for the tokenizer's bos/eos. "
            "'multiturn' is encode_multiturn's (prompt, response) pairs; 'oneturn' is encode_oneturn and "
            "'prompt' the chat engine's generation prompt (encode_oneturn of the messages before the last one "
            "plus an empty assistant turn), each given only where it differs from what the pairs imply "
            "(oneturn: all pairs joined, last response apart; prompt: everything before the last response). "
            "'same_cases_as': LF renders every case of this template exactly as that template's cases. "
            "'text' (first case) joins the segments with bos '<s>' and eos '</s>'. 'real_tokenizer' holds ids "
            "from LF's get_template_and_fix_tokenizer + encode_* with SmolLM2-135M-Instruct's tokenizer."
        ),
        "llamafactory": {tag: commits[tag] for tag in TAGS},
        "system": SYSTEM,
        "tools": TOOLS,
        "conversations": CONVERSATIONS,
        "changed_between_tags": sorted(changed),
        "templates": templates,
        "real_tokenizer": per_tag[TAGS[0]].get("real_tokenizer", {}),
    }
    Path(args.out).write_text(_dump(data), encoding="utf-8")
    print(f"wrote {args.out}: {len(templates)} templates ({len(changed)} changed between tags)")


if __name__ == "__main__":
    main()
