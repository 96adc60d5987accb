"""The tokenizer shortcut (model/tokenizer_loading.py): for the model types it covers it loads the class
AutoTokenizer would choose, without importing torch, and the tokenizer is the same; other folders go through
AutoTokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.config.args import ModelArguments
from tuneforge.model.tokenizer_loading import (REGISTERED_TOKENIZERS, TOKENIZER_MODULES, direct_tokenizer_class_name,
                                               tokenizer_from_files)

PROBES = ["Hello world, how are you?", "def add(a, b):\n    return a + b\n", "你好，世界！学号 20230417",
          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "  spaces\t\ttabs \n\n"]


def test_the_table_is_transformers_own_mapping():
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    for model_type, registered in REGISTERED_TOKENIZERS.items():
        assert TOKENIZER_MAPPING_NAMES.get(model_type) == registered, model_type
    for name, module in TOKENIZER_MODULES.items():
        assert tokenizer_class_from_name(name).__module__ == module, name


def _folder(tmp_path: Path, tokenizer_dir: Path, model_type: str, declared: str, **extra) -> Path:
    folder = tmp_path / f"{model_type}-{declared}"
    shutil.copytree(tokenizer_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **extra}))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": declared}))
    return folder


@pytest.mark.parametrize("model_type, declared, expected", [
    ("llama", "TokenizersBackend", "TokenizersBackend"),
    ("llama", "PreTrainedTokenizerFast", "TokenizersBackend"),  # Llama 3's files
    ("qwen2", "Qwen2Tokenizer", "Qwen2Tokenizer"),  # Qwen2.5's files
    ("qwen2", "Qwen2TokenizerFast", "Qwen2Tokenizer"),
    ("qwen3", "Qwen2Tokenizer", "Qwen2Tokenizer"),
    ("qwen3_moe", "Qwen2Tokenizer", "Qwen2Tokenizer"),
])
def test_the_shortcut_loads_what_auto_tokenizer_loads(tmp_path, tiny_tokenizer_dir, model_type, declared, expected):
    from transformers import AutoTokenizer

    folder = _folder(tmp_path, tiny_tokenizer_dir, model_type, declared)
    assert direct_tokenizer_class_name(folder) == expected
    reference = AutoTokenizer.from_pretrained(folder, padding_side="right")
    ours = tokenizer_from_files(ModelArguments(model_name_or_path=str(folder)))
    assert type(ours) is type(reference) and type(ours).__name__ == expected
    assert ours.padding_side == "right" and len(ours) == len(reference)
    assert ours.special_tokens_map == reference.special_tokens_map and ours.chat_template == reference.chat_template
    assert ours(PROBES)["input_ids"] == reference(PROBES)["input_ids"]
    assert ours.batch_decode(reference(PROBES)["input_ids"]) == reference.batch_decode(reference(PROBES)["input_ids"])


@pytest.mark.parametrize("model_type, declared, extra", [
    ("qwen2", "TokenizersBackend", {}),  # transformers overrides this pair (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
    ("llama", "LlamaTokenizerFast", {}),  # a ByteLevel check decides
    ("mistral", "TokenizersBackend", {}),  # not covered
    ("gemma3", "GemmaTokenizer", {}),
    ("llama", "TokenizersBackend", {"auto_map": {"AutoTokenizer": ["x.Tok", None]}}),  # remote code
])
def test_everything_else_goes_through_auto_tokenizer(tmp_path, tiny_tokenizer_dir, model_type, declared, extra):
    assert direct_tokenizer_class_name(_folder(tmp_path, tiny_tokenizer_dir, model_type, declared, **extra)) is None


def test_no_shortcut_without_the_files(tmp_path, tiny_tokenizer_dir):
    folder = _folder(tmp_path, tiny_tokenizer_dir, "llama", "TokenizersBackend")
    (folder / "tokenizer.json").unlink()
    assert direct_tokenizer_class_name(folder) is None
    assert direct_tokenizer_class_name(tmp_path / "missing") is None


def test_data_preview_runs_without_torch(tmp_path, tiny_llama_dir):
    """`tuneforge data preview` on a Llama folder encodes the data without importing torch (1-2 s saved)."""
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(5)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "rows", "dataset_dir": str(tmp_path), "template": "qwen", "cutoff_len": 64,
              "output_dir": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    code = ("import sys; from tuneforge.cli.main import main; code = main(['data', 'preview', sys.argv[1], '-n', '1']); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run.yaml")], capture_output=True, text=True,
                            env={"TUNEFORGE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
                                 "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "read 5, kept 5" in result.stdout and "torch imported: False" in result.stdout
