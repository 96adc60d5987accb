"""Shared fixtures: a tokenizer trained locally in well under a second and tiny random models.

Nothing here touches a hub. The tokenizer has ChatML-style special tokens so that chat templates
(`chatml`, `qwen`, `smollm2`, `auto`) can be exercised exactly as on real models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<pad>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Hello, who are you? I am an AI assistant built to help you.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "User asks a question and the assistant answers politely.",
    "你好，我是一个人工智能助手。请问有什么可以帮你？",
    "Translate the following sentence into Chinese. 将下面的句子翻译成英文。",
    "system user assistant function observation tool call result",
    "Alice scored 91 points in math. Bob scored 78 points in physics.",
    "def add(a, b):\n    return a + b\n",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Beijing\"}}",
    "### Instruction:\n### Response:\nHuman: Assistant: [INST] [/INST] <<SYS>> <</SYS>>",
]


def build_tiny_tokenizer(out_dir: Path) -> Path:
    """Train a byte-level BPE tokenizer (vocab ~400) and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)
    return out_dir


def _save_tiny_model(config, tokenizer_dir: Path, out_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _tiny_config_kwargs(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(**_tiny_config_kwargs(tiny_tokenizer))
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer) -> Path:
    from transformers import Qwen2Config

    config = Qwen2Config(**_tiny_config_kwargs(tiny_tokenizer))
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def one_process_runs(tmp_path_factory):
    """`run(root, output_dir, *overrides)`: `tuneforge train train.yaml` of a several-process test's workspace in one
    process (tests/multiproc.py), its output folder copied to root/output_dir. Made once per session for the same
    workspace files and overrides: the DDP, DeepSpeed, FSDP and Ray tests compare against the same one-process runs,
    and each launch costs ~8 s of imports on 2 cores."""
    import hashlib
    import shutil

    from multiproc import train

    store, made = tmp_path_factory.mktemp("one_process_runs"), set()

    def run(root: Path, output_dir: str, *overrides: str) -> None:
        files = sorted(p for p in [root / "train.yaml", *(root / "data").rglob("*")] if p.is_file())
        key = hashlib.sha256(repr([(p.relative_to(root), p.read_bytes()) for p in files] + list(overrides)).encode())
        folder = store / key.hexdigest()[:16]
        if folder not in made:
            train(root, f"output_dir={folder}", *overrides)
            made.add(folder)
        shutil.copytree(folder, root / output_dir)

    return run


@pytest.fixture
def one_process_ddp(tmp_path, monkeypatch):
    """`wrap(model, full_logits_model=model)` -> the model in torch's DistributedDataParallel (a one-process gloo
    group, destroyed afterwards), the forward of `full_logits_model`'s class -- full logits -- made to fail: a
    label-only loss must run as the wrapper's forward without ever calling it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def full_logits(*args, **kwargs):
        raise AssertionError("the model's own forward (full logits) was called")

    def wrap(model, full_logits_model=None):
        wrapped = DistributedDataParallel(model)
        monkeypatch.setattr(type(model if full_logits_model is None else full_logits_model), "forward", full_logits)
        return wrapped

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'ddp_store'}", rank=0, world_size=1)
    try:
        yield wrap
    finally:
        dist.destroy_process_group()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def data_run_config(dataset, seed: int = 42, **data):
    """A real RunConfig (not validated: tests reach the data layer's own checks) with these data keys."""
    from tuneforge.config.args import (DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments,
                                       TrainingArguments)
    from tuneforge.config.parser import RunConfig

    return RunConfig(model=ModelArguments(model_name_or_path="unused"),
                     data=DataArguments(dataset=dataset, **{"dataset_dir": "data", **data}),
                     finetuning=FinetuningArguments(), generating=GeneratingArguments(),
                     training=TrainingArguments(output_dir="unused", seed=seed, report_to="none"))


# A few alpaca rows (English and Chinese) for end-to-end runs on the tiny models.
IDENTITY_ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forgey, made by the tuneforge team."},
    {"instruction": "What is your name?", "input": "", "output": "My name is Forgey."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "你是谁？", "input": "", "output": "我是 Forgey。"},
] * 4


def write_workspace(root: Path, monkeypatch, rows: list[dict], name: str, config: dict, yaml_name: str) -> Path:
    """A run folder as a user has it: data/<name>.json registered in data/dataset_info.json, the config
    as YAML, a private tuneforge cache; the test then runs from `root`."""
    import json

    import yaml

    monkeypatch.setenv("TUNEFORGE_CACHE", str(root / "cache"))
    data_dir = root / "data"
    data_dir.mkdir()
    (data_dir / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (data_dir / "dataset_info.json").write_text(json.dumps({name: {"file_name": f"{name}.json"}}))
    (root / yaml_name).write_text(yaml.safe_dump(config, allow_unicode=True))
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny Qwen3-VL folder: random weights, the tiny tokenizer + vision tokens, a PIL image processor."""
    from vision_fixtures import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture
def image_data(tmp_path) -> Path:
    """A dataset folder with LF's `mllm_demo` entry and six rows over three small images (tests/vision_fixtures.py)."""
    from vision_fixtures import write_image_dataset

    return write_image_dataset(tmp_path / "data")
