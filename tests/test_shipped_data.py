"""Checks on the demo data under data/ and the example configs under examples/.

These files are what a new user runs first, so every registered file must exist and parse, every
row must be well formed for its format, the generated files must match their generator scripts,
and the example YAMLs must use LLaMA-Factory key names only.
"""

from __future__ import annotations

import importlib

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
EXAMPLES_DIR = REPO / "examples"
DATASET_INFO = json.loads((DATA_DIR / "dataset_info.json").read_text(encoding="utf-8"))
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.yaml"))

# Row counts promised in data/README.md.
EXPECTED_ROWS = {
    "identity": 80,
    "identity_tuneforge": 80,
    "demo_bilingual_alpaca": 200,
    "demo_bilingual_sharegpt": 100,
    "demo_openai": 30,
    "student_grades": 200,
    "demo_dpo_en_zh": 60,
    "demo_kto": 60,
    "demo_pt_corpus": 80,
    "school_records_zh50": 50,
    "arithmetic_train": 240,
    "arithmetic_heldout": 60,
    "mllm_demo": 13,
}

# LLaMA-Factory's dataset_info.json vocabulary.
ENTRY_KEYS = {
    "file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "formatting",
    "ranking", "subset", "split", "folder", "num_samples", "revision", "columns", "tags",
}
COLUMN_KEYS = {
    "prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
    "chosen", "rejected", "kto_tag",
}
TAG_KEYS = {
    "role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag",
}
SHAREGPT_DEFAULT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
OPENAI_DEFAULT_TAGS = {
    "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
    "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system",
}

# Every key the example YAMLs may use: the config layer's catalogue of LLaMA-Factory model / data /
# finetuning / generating arguments and HF Seq2SeqTrainingArguments names.
from tuneforge.config.catalogue import all_known_keys  # noqa: E402

ALLOWED_EXAMPLE_KEYS = set(all_known_keys())

CJK = re.compile(r"[\u4e00-\u9fff]")


def load_rows(entry: dict) -> list[dict]:
    path = DATA_DIR / entry["file_name"]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = json.loads(text)
    assert isinstance(rows, list), f"{path.name}: top level must be a JSON list"
    return rows


def load_script(name: str):
    """Import a data/ script (not a package) by path."""
    spec = importlib.util.spec_from_file_location(name, DATA_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entries(predicate) -> list[str]:
    return [name for name, entry in DATASET_INFO.items() if predicate(entry)]


def nonempty_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


# ---------------------------------------------------------------- dataset_info.json and files


def test_dataset_info_registers_every_shipped_data_file():
    registered = {entry["file_name"] for entry in DATASET_INFO.values()}
    not_datasets = {"dataset_info.json"}
    shipped = {p.name for p in DATA_DIR.iterdir() if p.suffix in {".json", ".jsonl"}} - not_datasets
    assert registered == shipped
    assert set(DATASET_INFO) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("name", sorted(DATASET_INFO))
def test_entry_uses_llamafactory_keys_and_file_parses(name):
    entry = DATASET_INFO[name]
    assert set(entry) <= ENTRY_KEYS
    assert set(entry.get("columns", {})) <= COLUMN_KEYS
    assert set(entry.get("tags", {})) <= TAG_KEYS
    assert entry.get("formatting", "alpaca") in {"alpaca", "sharegpt", "openai"}
    rows = load_rows(entry)
    assert len(rows) == EXPECTED_ROWS[name]
    assert all(isinstance(row, dict) for row in rows)


def column(entry: dict, key: str, default: str) -> str:
    return entry.get("columns", {}).get(key, default)


@pytest.mark.parametrize(
    "name",
    entries(lambda e: e.get("formatting", "alpaca") == "alpaca" and not e.get("ranking")
            and column(e, "prompt", "instruction") == "instruction"),
)
def test_alpaca_rows_are_well_formed(name):
    entry = DATASET_INFO[name]
    for i, row in enumerate(load_rows(entry)):
        where = f"{entry['file_name']} row {i}"
        assert nonempty_str(row.get("instruction")), where
        assert nonempty_str(row.get("output")), where
        assert isinstance(row.get("input", ""), str), where
        assert set(row) <= {"instruction", "input", "output", "system", "history"}, where
        if "system" in row:
            assert "system" in entry["columns"] and nonempty_str(row["system"]), where
        if "history" in row:
            assert "history" in entry["columns"], where
            assert row["history"] and all(
                isinstance(turn, list) and len(turn) == 2 and all(map(nonempty_str, turn)) for turn in row["history"]
            ), where


def test_bilingual_alpaca_mix():
    rows = load_rows(DATASET_INFO["demo_bilingual_alpaca"])
    chinese = [r for r in rows if CJK.search(r["instruction"])]
    assert len(chinese) == 100
    assert sum(bool(r["input"]) for r in rows) >= 20
    assert sum("system" in r for r in rows) >= 5
    assert sum("history" in r for r in rows) >= 3


@pytest.mark.parametrize("name", entries(lambda e: e.get("formatting") in {"sharegpt", "openai"}))
def test_conversations_alternate_roles(name):
    entry = DATASET_INFO[name]
    defaults = OPENAI_DEFAULT_TAGS if entry["formatting"] == "openai" else SHAREGPT_DEFAULT_TAGS
    tags = {**defaults, **entry.get("tags", {})}
    messages_key = column(entry, "messages", "conversations")
    turn_counts = set()
    for i, row in enumerate(load_rows(entry)):
        where = f"{entry['file_name']} row {i}"
        messages = row[messages_key]
        roles = [m[tags["role_tag"]] for m in messages]
        assert all(nonempty_str(m[tags["content_tag"]]) for m in messages), where
        if roles[0] == tags["system_tag"]:
            roles = roles[1:]
        assert tags["system_tag"] not in roles, where
        expected = [tags["user_tag"], tags["assistant_tag"]] * (len(roles) // 2)
        assert roles == expected and len(roles) >= 2, f"{where}: roles {roles}"
        turn_counts.add(len(roles) // 2)
        if "kto_tag" in entry.get("columns", {}):
            assert isinstance(row[entry["columns"]["kto_tag"]], bool), where
    assert 1 in turn_counts and (2 in turn_counts or name == "demo_kto")


def test_sharegpt_demo_has_three_turn_and_system_conversations():
    rows = load_rows(DATASET_INFO["demo_bilingual_sharegpt"])
    assert any(len(r["conversations"]) == 6 for r in rows)
    assert sum(r["conversations"][0]["from"] == "system" for r in rows) >= 5


def test_ranking_pairs_and_kto_labels():
    entry = DATASET_INFO["demo_dpo_en_zh"]
    assert entry["ranking"] is True
    for i, row in enumerate(load_rows(entry)):
        assert nonempty_str(row["instruction"]) and isinstance(row["input"], str), f"row {i}"
        assert nonempty_str(row["chosen"]) and nonempty_str(row["rejected"]), f"row {i}"
        assert row["chosen"] != row["rejected"], f"row {i}"
    labels = [row["label"] for row in load_rows(DATASET_INFO["demo_kto"])]
    assert labels.count(True) == 30 and labels.count(False) == 30


def test_pt_corpus_is_plain_text():
    entry = DATASET_INFO["demo_pt_corpus"]
    rows = load_rows(entry)
    assert all(set(row) == {"text"} and nonempty_str(row["text"]) for row in rows)
    assert sum(bool(CJK.search(row["text"])) for row in rows) == 40
    assert len({row["text"] for row in rows}) == len(rows)


# ---------------------------------------------------------------- generated files


def test_identity_template_uses_placeholders():
    rows = load_rows(DATASET_INFO["identity"])
    assert all("{{name}}" in r["output"] or "{{author}}" in r["output"] for r in rows)
    by_instruction = {r["instruction"]: r["output"] for r in rows}
    assert by_instruction["Who are you?"] == (
        "I am {{name}}, an AI assistant developed by {{author}}. How can I help you today?"
    )
    assert "你是谁？" in by_instruction and "介绍一下你自己" in by_instruction
    assert len(by_instruction) == len(rows)


def test_identity_tuneforge_is_the_substituted_identity():
    make_identity = load_script("make_identity")
    template_rows = load_rows(DATASET_INFO["identity"])
    shipped_text = (DATA_DIR / "identity_tuneforge.json").read_text(encoding="utf-8")
    assert "{{" not in shipped_text and "}}" not in shipped_text
    expected = make_identity.substitute_identity(template_rows, "Forgey", "the tuneforge team")
    assert json.loads(shipped_text) == expected
    assert shipped_text == make_identity.dump_rows(expected)
    who = next(r for r in expected if r["instruction"] == "Who are you?")
    assert who["output"] == "I am Forgey, an AI assistant developed by the tuneforge team. How can I help you today?"


def test_make_identity_cli_writes_custom_identity(tmp_path):
    make_identity = load_script("make_identity")
    out = tmp_path / "identity_ada.json"
    assert make_identity.main(["--name", "Ada", "--author", "Acme Labs", "--output", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert len(rows) == 80
    who = next(r for r in rows if r["instruction"] == "你是谁？")
    assert who["output"] == "我是 Ada，由 Acme Labs 开发的人工智能助手。请问有什么可以帮您？"
    with pytest.raises(SystemExit):
        make_identity.main(["--name", "{{name}}", "--output", str(out)])


def test_student_grades_are_reproducible_from_the_script(tmp_path):
    make_grades = load_script("make_student_grades")
    rows = make_grades.make_student_grades()
    shipped_text = (DATA_DIR / "student_grades.json").read_text(encoding="utf-8")
    assert shipped_text == make_grades.dump_rows(rows)
    assert make_grades.make_student_grades() == rows
    assert make_grades.make_student_grades(seed=1) != rows
    out = tmp_path / "grades.json"
    assert make_grades.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == shipped_text


def test_student_grades_are_distinct_consistent_facts():
    grades = load_script("make_student_grades").GRADES
    rows = load_rows(DATASET_INFO["student_grades"])
    assert len({r["instruction"] for r in rows}) == 200
    for row in rows:
        if m := re.fullmatch(r"What grade did (.+) get in (\w+)\?", row["instruction"]):
            name, subject = m.groups()
            assert row["output"] in {f"{name} got {g} in {subject}." for g in grades}, row
        else:
            m = re.fullmatch(r"(\S+?)的(\S+?)考了什么成绩？", row["instruction"])
            assert m, row
            assert row["output"] in {f"{m[1]}的{m[2]}考了 {g}。" for g in grades}, row
    assert sum(bool(CJK.search(r["instruction"])) for r in rows) == 100


# ---------------------------------------------------------------- examples/*.yaml


def read_example(path: Path) -> dict:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict), f"{path.name}: top level must be a mapping"
    return config


def test_expected_examples_exist():
    names = {p.name for p in EXAMPLE_FILES}
    assert {
        "demo_lora_sft.yaml", "demo_chat.yaml", "demo_merge.yaml", "demo_full_sft.yaml", "demo_freeze_sft.yaml",
        "demo_pt.yaml", "qwen2_5_lora_sft.yaml", "qwen2_5_full_sft.yaml", "llama3_lora_sft.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_parses_and_uses_known_keys(path):
    config = read_example(path)
    unknown = set(config) - ALLOWED_EXAMPLE_KEYS
    assert not unknown, f"{path.name}: keys not in the LLaMA-Factory list: {sorted(unknown)}"
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    runs = config.get("do_train") or config.get("do_predict")
    command = "train" if runs else ("export" if "export_dir" in config else "eval" if "task" in config else "chat")
    assert first_line == f"# tuneforge {command} examples/{path.name}"
    dataset_names = [name for key in ("dataset", "eval_dataset") if key in config for name in str(config[key]).split(",")]
    for name in dataset_names:
        assert name.strip() in DATASET_INFO, f"{path.name}: dataset {name!r} not in data/dataset_info.json"
    if config.get("do_train"):
        text = path.read_text(encoding="utf-8")
        for section in ("### model", "### method", "### dataset", "### output", "### train", "### eval"):
            assert section in text, f"{path.name}: missing section {section}"
        assert config["dataset_dir"] == "data"


def test_demo_lora_sft_matches_the_demo_plan():
    config = read_example(EXAMPLES_DIR / "demo_lora_sft.yaml")
    assert config["model_name_or_path"] == "builtin:smollm2"
    assert (config["stage"], config["finetuning_type"], config["lora_target"], config["lora_rank"]) == (
        "sft", "lora", "all", 8)
    assert config["dataset"] == "identity_tuneforge"
    assert config["learning_rate"] == 5.0e-4
    rows = EXPECTED_ROWS["identity_tuneforge"]
    steps_per_epoch = math.ceil(rows / config["per_device_train_batch_size"]) // config["gradient_accumulation_steps"]
    total_steps = steps_per_epoch * config["num_train_epochs"]
    assert 60 <= total_steps <= 120
    chat = read_example(EXAMPLES_DIR / "demo_chat.yaml")
    merge = read_example(EXAMPLES_DIR / "demo_merge.yaml")
    assert chat["adapter_name_or_path"] == merge["adapter_name_or_path"] == config["output_dir"]
    assert chat.get("template") == merge.get("template") == config.get("template")
    assert merge["export_dir"] == "output/smollm2-135m-demo-merged"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_loads_with_the_config_loader(path):
    parser = importlib.import_module("tuneforge.config.parser")
    config = read_example(path)
    overrides = []
    if config.get("bf16"):
        # GPU-oriented examples ask for bf16; HF refuses it on a machine without bf16 support.
        import torch

        if not torch.cuda.is_available():
            overrides.append("bf16=false")
    run = parser.load_config(str(path), overrides, require_output_dir=bool(config.get("do_train")))
    assert run.model.model_name_or_path == config["model_name_or_path"]
    if "dataset" in config:
        assert run.raw["dataset"] == config["dataset"]


@pytest.mark.parametrize("name", sorted(DATASET_INFO))
def test_every_row_converts_with_the_tuneforge_data_layer(name):
    registry = importlib.import_module("tuneforge.data.registry")
    loaders = importlib.import_module("tuneforge.data.loaders")
    formats = importlib.import_module("tuneforge.data.formats")
    (spec,) = registry.load_dataset_specs([name], str(DATA_DIR), None)
    raw_rows = load_rows(DATASET_INFO[name])
    conversations = [formats.convert_row(r.values, spec, r.source) for r in loaders.load_rows(spec)]
    assert len(conversations) == EXPECTED_ROWS[name]

    for raw, conv in zip(raw_rows, conversations):
        roles = [m.role for m in conv.messages]
        if name == "demo_pt_corpus":
            assert roles == ["user"] and conv.messages[0].content == raw["text"]
        elif spec.ranking:
            assert roles == ["user"] and conv.chosen.content == raw["chosen"] and conv.rejected.content == raw["rejected"]
        else:
            assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        if name == "demo_kto":
            assert conv.kto_tag is raw["label"]
        if name == "demo_bilingual_alpaca":
            assert conv.system == raw.get("system", "")
            assert len(conv.messages) == 2 + 2 * len(raw.get("history", []))
            user = conv.messages[-2].content
            assert user == (raw["instruction"] + "\n" + raw["input"] if raw["input"] else raw["instruction"])

    if name == "identity_tuneforge":
        who = next(c for c in conversations if c.messages[0].content == "Who are you?")
        assert who.messages[1].content == (
            "I am Forgey, an AI assistant developed by the tuneforge team. How can I help you today?"
        )
    if name in {"demo_bilingual_sharegpt", "demo_openai"}:
        with_system = [c for c in conversations if c.system]
        assert with_system and all("system" not in [m.role for m in c.messages] for c in conversations)


def test_image_demo_matches_its_generator(tmp_path):
    """data/mllm_demo.json and its images are what make_mllm_demo.py writes (pixels compared, not PNG bytes)."""
    from PIL import Image, ImageChops

    spec = importlib.util.spec_from_file_location("make_mllm_demo", DATA_DIR / "make_mllm_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.make_mllm_demo(tmp_path)
    assert rows == json.loads((DATA_DIR / "mllm_demo.json").read_text(encoding="utf-8"))
    paths = {path for row in rows for path in row["images"]}
    assert all(row["messages"][0]["content"].count("<image>") == len(row["images"]) for row in rows)
    for path in paths:
        shipped, made = Image.open(DATA_DIR / path), Image.open(tmp_path / path)
        assert shipped.size == made.size and ImageChops.difference(shipped.convert("RGB"), made).getbbox() is None
    assert {p.name for p in (DATA_DIR / "mllm_demo_data").iterdir()} == {Path(p).name for p in paths}
