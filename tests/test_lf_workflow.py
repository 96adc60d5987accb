"""LLaMA-Factory's README workflow with its own example files, one after the other in one folder: a training example
writes `saves/...`, the inference example chats with what it wrote, the merge example exports it, and a chat with
the export answers as the adapter did. tests/test_lf_examples.py checks each file alone; here the files meet.

Each example is used as LF ships it except: hub model ids -> the tiny local models of test_lf_examples (paths under
`saves/` are kept: they are what the previous step wrote), datasets -> local ones, `max_steps: 2` with a learning
rate high enough to change the tiny model's answers, and greedy decoding for the comparisons. The full-SFT example
runs without its `deepspeed` key (one process here; tests/test_deepspeed.py runs ZeRO-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_lf_examples import (EXAMPLES, cpu_only, make_workspace, map_datasets, tiny_template_model,  # noqa: F401
                              tiny_vl_dir)
from tuneforge.cli.main import main

SETTINGS = {entry["path"]: entry["settings"] for entry in EXAMPLES["training_configs"]}
GREEDY = ["do_sample=false", "max_new_tokens=8"]


@pytest.fixture
def lf_folder(tmp_path, monkeypatch, tiny_template_model, tiny_vl_dir):  # noqa: F811 (fixtures imported above)
    root = make_workspace(tmp_path / "work")
    monkeypatch.chdir(root)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))

    def write(example: str, **changes) -> str:
        """The example's settings in this folder as `<name>.yaml`; returns the file name."""
        settings = dict(SETTINGS[f"examples/{example}"])
        model = settings["model_name_or_path"]
        if not model.startswith("saves/"):
            settings["model_name_or_path"] = str(tiny_vl_dir if "-VL" in model else tiny_template_model)
        for key in ("dataset", "eval_dataset"):
            if key in settings:
                settings[key] = map_datasets(settings[key])
        if settings.get("do_train"):  # enough of a step that the trained model answers otherwise than the base
            settings.update(max_steps=2, learning_rate=0.02 if settings["finetuning_type"] == "lora" else 2e-3)
        settings.update(changes)
        name = example.replace("/", "_")
        Path(name).write_text(yaml.safe_dump({k: v for k, v in settings.items() if v is not None}), encoding="utf-8")
        return name

    return write


def _chat(capsys, config: str, *overrides: str) -> str:
    capsys.readouterr()
    assert main(["chat", config, *GREEDY, *overrides, "--prompt", "Who are you?"]) == 0, capsys.readouterr().err[-1500:]
    return capsys.readouterr().out.strip()


def test_lora_train_chat_merge_then_chat_with_the_merged_model(lf_folder, capsys):
    assert main(["train", lf_folder("train_lora/qwen3_lora_sft.yaml")]) == 0
    assert Path("saves/qwen3-4b/lora/sft/adapter_model.safetensors").is_file()
    with_adapter = _chat(capsys, lf_folder("inference/qwen3_lora_sft.yaml"))
    assert with_adapter != _chat(capsys, lf_folder("inference/qwen3.yaml"))  # the base model answers otherwise
    assert main(["export", lf_folder("merge_lora/qwen3_lora_sft.yaml")]) == 0
    merged = Path("saves/qwen3_sft_merged")
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    # LF's inference file pointed at the export, without the adapter: the same greedy answer
    assert _chat(capsys, lf_folder("inference/qwen3_lora_sft.yaml", model_name_or_path=str(merged),
                                   adapter_name_or_path=None)) == with_adapter


def test_full_train_then_its_inference_and_merge_files(lf_folder, capsys):
    assert main(["train", lf_folder("train_full/qwen3_full_sft.yaml", deepspeed=None)]) == 0
    assert (Path("saves/qwen3-4b/full/sft") / "config.json").is_file()
    answer = _chat(capsys, lf_folder("inference/qwen3_full_sft.yaml"))
    assert answer != _chat(capsys, lf_folder("inference/qwen3.yaml"))
    assert main(["export", lf_folder("merge_lora/qwen3_full_sft.yaml")]) == 0
    merged = lf_folder("inference/qwen3_full_sft.yaml", model_name_or_path="saves/qwen3_sft_merged")
    assert _chat(capsys, merged) == answer


def test_qlora_adapter_then_the_nlg_eval_predict_file(lf_folder, capsys):
    """LF's FSDP+QLoRA training file (one process) writes saves/llama3-8b/lora/sft; its predict file generates for
    50 rows of identity + alpaca_en_demo with that adapter on the unquantized model and scores them."""
    assert main(["train", lf_folder("extras/fsdp_qlora/llama3_lora_sft.yaml")]) == 0
    assert main(["train", lf_folder("extras/nlg_eval/llama3_lora_predict.yaml", max_new_tokens=4)]) == 0
    out = Path("saves/llama3-8b/lora/predict")
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 100 and {"prompt", "predict", "label"} <= set(rows[0])  # max_samples 50 per dataset
    metrics = json.loads((out / "predict_results.json").read_text(encoding="utf-8"))
    assert {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"} <= set(metrics)


def test_vision_lora_train_merge_and_chat_with_the_export(lf_folder, capsys):
    assert main(["train", lf_folder("train_lora/qwen3vl_lora_sft.yaml")]) == 0
    assert main(["export", lf_folder("merge_lora/qwen3vl_lora_sft.yaml")]) == 0
    merged = Path("saves/qwen3_vl_sft_merged")
    assert (merged / "preprocessor_config.json").is_file()  # the image processor travels with the export
    with_adapter = _chat(capsys, lf_folder("inference/qwen3vl.yaml", adapter_name_or_path="saves/qwen3-vl-4b/lora/sft",
                                           finetuning_type="lora"))
    assert _chat(capsys, lf_folder("inference/qwen3vl.yaml", model_name_or_path=str(merged))) == with_adapter
    assert _chat(capsys, lf_folder("inference/qwen3vl.yaml")) != with_adapter


def test_gptq_merge_file(lf_folder):
    """`merge_lora/qwen3_gptq.yaml`: 4-bit GPTQ with LF's default calibration (128 windows of 1,024 tokens) from
    its `data/c4_demo.jsonl` (here: generated text of the same layout)."""
    words = "the of and to in is that for it as was with be by on not he this are or his from at which".split()
    rows = [{"text": " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(1500))} for i in range(8)]
    Path("data/c4_demo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["export", lf_folder("merge_lora/qwen3_gptq.yaml")]) == 0
    config = json.loads(Path("saves/qwen3_gptq/config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq" and config["quantization_config"]["bits"] == 4
