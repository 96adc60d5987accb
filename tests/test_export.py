"""Export: merge parity, reload, chat template, Modelfile, atomic replacement, argument errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tuneforge.config.args import (DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments,
                                   TrainingArguments)
from tuneforge.config.parser import RunConfig
from tuneforge.errors import ConfigError, ModelError, NotSupportedError
from tuneforge.export import merge_with_check, run_export
from tuneforge.model.loader import load_base_model, load_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def make_cfg(base, export_dir, adapter=None, template=None, **model_overrides):
    model = ModelArguments(model_name_or_path=str(base), adapter_name_or_path=str(adapter) if adapter else None,
                           export_dir=str(export_dir) if export_dir else None, **model_overrides)
    return RunConfig(model=model, data=DataArguments(template=template), finetuning=FinetuningArguments(),
                     generating=GeneratingArguments(), training=TrainingArguments(output_dir="unused", report_to="none"))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    cfg = make_cfg(tiny_llama_dir, "unused")
    model = load_model(cfg.model, cfg.finetuning, is_trainable=True)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def test_export_merges_with_parity_and_reloads(tiny_llama_dir, adapter_dir, tmp_path, caplog):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_cfg(tiny_llama_dir, tmp_path / "merged", adapter_dir)
    with caplog.at_level(logging.INFO, logger="tuneforge.export"):
        out = run_export(cfg)
    assert out == (tmp_path / "merged").resolve()
    assert any(r.getMessage().startswith("merge check: max |Δlogit| = ") for r in caplog.records)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "Modelfile"} <= {p.name for p in out.iterdir()}
    assert not (tmp_path / "merged.tmp").exists()

    adapter_model = PeftModel.from_pretrained(load_base_model(cfg.model, is_trainable=False), adapter_dir)
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.dtype == torch.float32
    torch.testing.assert_close(logits(exported), logits(adapter_model), atol=1e-4, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template  # auto: the tokenizer's own template kept
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM .\nTEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}")
    assert "PARAMETER stop \"<|im_end|>\"" in modelfile


def test_export_with_builtin_template_sets_chat_template(tiny_llama_dir, adapter_dir, tmp_path):
    from transformers import AutoTokenizer

    from tuneforge.data.templates import get_template

    out = run_export(make_cfg(tiny_llama_dir, tmp_path / "qwen", adapter_dir, template="qwen"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    template = get_template("qwen", tokenizer)
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    expected = template.render_text(turns, None, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    assert tokenizer.apply_chat_template(turns, tokenize=False) == expected
    assert expected.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert 'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""' in (out / "Modelfile").read_text()


def test_export_without_adapter_resaves_in_requested_dtype_and_shards(tiny_qwen2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tiny_qwen2_dir, tmp_path / "full", infer_dtype="bfloat16", export_size=0.00005)
    out = run_export(cfg)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    exported = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert exported.dtype == torch.bfloat16
    base = load_base_model(cfg.model, is_trainable=False, compute_dtype=torch.float32)
    expected = {k: v.to(torch.bfloat16) for k, v in base.state_dict().items()}
    got = exported.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_failed_export_keeps_the_previous_one(tiny_llama_dir, tmp_path, monkeypatch):
    import tuneforge.export as export

    out = tmp_path / "out"
    export.run_export(make_cfg(tiny_llama_dir, out))
    good = (out / "model.safetensors").read_bytes()
    (tmp_path / "out.tmp").mkdir()  # a user's folder that happens to have the old staging name: not ours
    (tmp_path / "out.tmp" / "notes.txt").write_text("mine")

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export.run_export(make_cfg(tiny_llama_dir, out))
    assert (out / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tmp"]  # no staging folder left
    assert (tmp_path / "out.tmp" / "notes.txt").read_text() == "mine"


# ---- export_dir never destroys what the export did not write (issue 10, item 1) -----------------
def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_export_refuses_the_current_directory(tiny_llama_dir, tmp_path, monkeypatch):
    (tmp_path / "train.yaml").write_text("stage: sft\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^export_dir: .* is the current directory"):
        run_export(make_cfg(tiny_llama_dir, "."))
    assert _tree(tmp_path) == ["train.yaml"]


def test_export_refuses_a_non_empty_folder_it_did_not_write(tiny_llama_dir, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (out / name).write_bytes(b"jpeg")
    with pytest.raises(ConfigError) as excinfo:
        run_export(make_cfg(tiny_llama_dir, out))
    assert str(excinfo.value) == (f"export_dir: {out} is not empty and is not a previous tuneforge merged model export: "
                                  "it holds a.jpg, b.jpg (2 entries). Nothing was written; choose a new or empty folder.")
    assert _tree(out) == ["a.jpg", "b.jpg"]


def test_export_refuses_a_folder_that_contains_the_adapter(tiny_llama_dir, adapter_dir, tmp_path):
    import shutil

    runs = tmp_path / "saves"
    adapter = shutil.copytree(adapter_dir, runs / "run1")
    (runs / "run2").mkdir()  # a sibling run
    (runs / "run2" / "adapter_model.safetensors").write_bytes(b"weights")
    before = _tree(runs)
    with pytest.raises(ConfigError, match=rf"^export_dir: {runs} contains the adapter \({adapter}\)"):
        run_export(make_cfg(tiny_llama_dir, runs, adapter=adapter))
    assert _tree(runs) == before
    with pytest.raises(ConfigError, match=rf"^export_dir: {adapter} is the adapter"):
        run_export(make_cfg(tiny_llama_dir, adapter, adapter=adapter))
    with pytest.raises(ConfigError, match=rf"^export_dir: {tiny_llama_dir} is the model"):
        run_export(make_cfg(tiny_llama_dir, tiny_llama_dir))


def test_export_refuses_a_file(tiny_llama_dir, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"precious")
    with pytest.raises(ConfigError, match=rf"^export_dir: {target} is a file, not a folder"):
        run_export(make_cfg(tiny_llama_dir, target))
    assert target.read_bytes() == b"precious"


def test_export_replaces_only_its_own_previous_export(tiny_llama_dir, tmp_path):
    out = tmp_path / "merged"
    run_export(make_cfg(tiny_llama_dir, out))
    run_export(make_cfg(tiny_llama_dir, out, infer_dtype="float16"))  # a previous export: replaced
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    (out / "README.md").write_text("my notes")
    with pytest.raises(ConfigError, match=r"plus files it did not write: README.md \(1 entry\)"):
        run_export(make_cfg(tiny_llama_dir, out))
    assert (out / "README.md").read_text() == "my notes"


def test_merge_check_detects_a_bad_merge(tiny_llama_dir, tiny_tokenizer, adapter_dir):
    from peft import PeftModel

    cfg = make_cfg(tiny_llama_dir, "unused")
    model = PeftModel.from_pretrained(load_base_model(cfg.model, is_trainable=False), adapter_dir)
    wrong = load_base_model(cfg.model, is_trainable=False)  # "merge" that forgot the adapter
    model.merge_and_unload = lambda: wrong
    with pytest.raises(ModelError, match=r"^merge check failed: the merged model's logits differ from the adapter model's by up to"):
        merge_with_check(model, tiny_tokenizer)


def test_export_argument_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^export_dir is not set"):
        run_export(make_cfg(tiny_llama_dir, None))
    with pytest.raises(NotSupportedError, match=r"^export_legacy_format: true \(.bin weights\) is not supported"):
        run_export(make_cfg(tiny_llama_dir, tmp_path / "x", export_legacy_format=True))
    with pytest.raises(ConfigError, match=r"is the model \(.*\); writing there would replace it"):
        run_export(make_cfg(tiny_llama_dir, tiny_llama_dir))
