"""Image SFT for the Qwen-VL family (data/media.py, data/collate_vision.py, model/vision.py), on a tiny Qwen3-VL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vision_fixtures import write_image_dataset, write_images


def _run_config(model_dir: Path, dataset_dir: Path, out: Path, **extra):
    from tuneforge.config.parser import load_config_dict

    settings = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
                "lora_target": "all", "dataset": "mllm_demo", "dataset_dir": str(dataset_dir),
                "template": "qwen3_vl_nothink", "cutoff_len": 512, "output_dir": str(out), "report_to": "none",
                "per_device_train_batch_size": 2, "max_steps": 2, "overwrite_output_dir": True, **extra}
    return load_config_dict(settings)


@pytest.fixture
def image_data(tmp_path):
    return write_image_dataset(tmp_path / "data")


@pytest.fixture
def vl_bundle(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    return cfg, tokenizer, build_datasets(cfg, tokenizer, template, stage="sft")


# ------------------------------------------------------------------------------------- the data
def test_each_image_tag_becomes_its_image_tokens(vl_bundle, image_data):
    cfg, tokenizer, bundle = vl_bundle
    train = bundle.train
    assert train.column_names == ["input_ids", "labels", "images"] and len(train) == 6
    # 64x64 -> a 4x4 patch grid (16 px patches) -> 4 tokens after the 2x2 merge; 96x64 -> 4x6 -> 6; 40x120 -> 8x2 -> 4
    expected = {"img0.png": 4, "img1.png": 6, "img2.png": 4}
    pad, start, end = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"])
    for sample in train:
        ids, labels = sample["input_ids"], sample["labels"]
        names = [Path(p).name for p in sample["images"]]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in sample["images"])
        assert ids.count(start) == ids.count(end) == len(names)
        assert ids.count(pad) == sum(expected[n] for n in names)
        first = ids.index(start)
        assert ids[first + 1:first + 1 + expected[names[0]]] == [pad] * expected[names[0]]
        assert ids[first + 1 + expected[names[0]]] == end
        assert all(label == -100 for token, label in zip(ids, labels) if token in (pad, start, end))
    text = tokenizer.decode(train[0]["input_ids"])
    assert text.startswith("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>What colour")


def test_lf_resize_before_the_image_processor(tiny_qwen3_vl_dir, tmp_path):
    """LF: down to image_max_pixels keeping the aspect, then both sides at least 28 pixels."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from tuneforge.data.media import VisionInputs, read_model_config

    names = write_images(tmp_path, sizes=((96, 64), (2000, 5), (6000, 5)))
    parts = (AutoImageProcessor.from_pretrained(tiny_qwen3_vl_dir), AutoTokenizer.from_pretrained(tiny_qwen3_vl_dir),
             read_model_config(str(tiny_qwen3_vl_dir)))
    vision = VisionInputs(*parts, max_pixels=1024, min_pixels=32 * 32)
    assert vision.load(str(tmp_path / names[0])).size == (39, 28)  # 96x64 x sqrt(1024/6144) = 39x26, then 28 high
    # 2000x5 -> 640x1 (max) -> 809x1 (min_pixels) -> 809x28 (sides >= 28)
    assert vision.load(str(tmp_path / names[1])).size == (809, 28)
    wide = VisionInputs(*parts, max_pixels=10**6, min_pixels=32 * 32)
    assert wide.load(str(tmp_path / names[2])).size == (28 * 180, 28)  # 6000x28 is wider than 200:1 -> 180:1, as LF
    grids = vision.pixels([str(tmp_path / names[0])])["image_grid_thw"]
    assert grids.tolist() == [[1, 2, 2]] and vision.token_count(grids[0]) == 1


def test_rows_whose_images_do_not_fit_are_reported(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    rows = json.loads((image_data / "mllm_demo.json").read_text())
    rows[0]["images"] = rows[0]["images"] * 2  # two images, one <image>
    rows[1]["images"] = ["images/missing.png"]
    (image_data / "mllm_demo.json").write_text(json.dumps(rows))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    assert len(bundle.train) == 4
    dropped = bundle.report.stats("mllm_demo", "train").dropped
    assert dropped == {"its images do not fit its text": 2}
    text = bundle.report.format()
    assert "2 image(s) in the images column but 1 `<image>` tag(s)" in text
    assert "image file not found: images/missing.png" in text


def test_media_dir_is_where_the_paths_start(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    """LF: image paths are relative to `media_dir` (default: the dataset's folder)."""
    import shutil

    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    shutil.move(str(image_data / "images"), str(tmp_path / "media" / "images"))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", media_dir="media")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    assert len(bundle.train) == 6
    assert all(Path(p).parent == tmp_path / "media" / "images" for s in bundle.train for p in s["images"])


def test_a_cut_image_drops_the_sample(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.errors import DataError
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", cutoff_len=12)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    with pytest.raises(DataError, match=r"no train samples left: all 6 row\(s\) of mllm_demo were dropped. Top "
                                        r"reasons: longer than cutoff_len \(12\) and has images \(not cut"):
        build_datasets(cfg, tokenizer, template, stage="sft")


def test_a_text_model_refuses_image_data(tiny_llama_dir, image_data, tmp_path, monkeypatch):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.errors import DataError
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_llama_dir, image_data, tmp_path / "out", template="qwen")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    with pytest.raises(DataError, match="has an `images` column .* does not take images; image inputs need a "
                                        "vision-language model"):
        build_datasets(cfg, tokenizer, template, stage="sft")


@pytest.mark.parametrize("extra, message", [
    ({"stage": "kto"}, "stage `kto` with a vision-language model is not supported yet"),
    ({"packing": True}, "`packing` / `neat_packing` with a vision-language model is not supported yet"),
    ({"streaming": True, "max_steps": 2}, "`streaming: true` with a vision-language model is not supported yet"),
])
def test_what_images_are_not_supported_with(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch, extra, message):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.errors import NotSupportedError
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", **extra)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    with pytest.raises(NotSupportedError, match=message.replace("(", r"\(")):
        build_datasets(cfg, tokenizer, template, stage=extra.get("stage", "sft"))


def test_config_checks(tiny_qwen3_vl_dir, image_data, tmp_path):
    from tuneforge.errors import ConfigError, NotSupportedError

    with pytest.raises(ConfigError, match=r"`image_max_pixels` \(100\) must be at least `image_min_pixels` \(1024\)"):
        _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", image_max_pixels=100)
    with pytest.raises(NotSupportedError, match="Gemma3's pan-and-scan"):
        _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", image_do_pan_and_scan=True)
    info = json.loads((image_data / "dataset_info.json").read_text())
    info["mllm_demo"]["columns"]["videos"] = "videos"
    (image_data / "dataset_info.json").write_text(json.dumps(info))
    from tuneforge.data.registry import load_dataset_specs

    with pytest.raises(NotSupportedError, match="videos columns are not supported yet"):
        load_dataset_specs("mllm_demo", str(image_data), None)


# ------------------------------------------------------------------------------------- batches and the model
def test_batches_carry_the_images_and_the_images_reach_the_model(vl_bundle, tiny_qwen3_vl_dir):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.train import workflow

    cfg, tokenizer, bundle = vl_bundle
    collator = workflow.sft_batch_collator(cfg, tokenizer, None, bundle.vision)
    batch = collator([bundle.train[i] for i in (0, 5)])  # one image, then two
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 8, 2], [1, 4, 4]]
    assert batch["pixel_values"].shape == (16 + 16 + 16, 3 * 2 * 16 * 16)
    assert batch["mm_token_type_ids"].sum() == 12 and batch["attention_mask"].shape == batch["input_ids"].shape
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir)
    loss = model(**batch).loss
    other = dict(batch, pixel_values=torch.rand_like(batch["pixel_values"]))
    assert abs(model(**other).loss.item() - loss.item()) > 1e-6  # the pixels are read
    text_batch = collator([{k: v for k, v in bundle.train[0].items() if k != "images"} | {"images": []}])
    assert "pixel_values" not in text_batch


@pytest.mark.parametrize("finetuning, trainable_parts", [
    ({"finetuning_type": "full"}, {"language_model", "lm_head"}),
    ({"finetuning_type": "full", "freeze_vision_tower": False, "freeze_multi_modal_projector": False},
     {"language_model", "lm_head", "visual.blocks", "visual.merger", "visual.patch_embed", "visual.pos_embed",
      "visual.deepstack_merger_list"}),
    ({"finetuning_type": "full", "freeze_language_model": True}, set()),
    ({"finetuning_type": "freeze", "freeze_trainable_layers": 1, "freeze_multi_modal_projector": False},
     {"language_model", "visual.merger"}),
])
def test_lf_freeze_rules(tiny_qwen3_vl_dir, image_data, tmp_path, finetuning, trainable_parts):
    from tuneforge.model.loader import load_model

    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", **finetuning)
    model = load_model(cfg.model, cfg.finetuning, is_trainable=True)
    parts = ("language_model", "lm_head", "visual.blocks", "visual.merger", "visual.patch_embed", "visual.pos_embed",
             "visual.deepstack_merger_list")
    trained = {part for name, p in model.named_parameters() if p.requires_grad for part in parts if part in name}
    assert trained == trainable_parts
    if finetuning["finetuning_type"] == "freeze":  # the last language layer only, none of the vision blocks
        names = [name for name, p in model.named_parameters() if p.requires_grad and "language_model" in name]
        assert names and all("layers.1." in name for name in names)


def test_lora_all_targets_the_language_model_only(tiny_qwen3_vl_dir, image_data, tmp_path):
    from tuneforge.model.loader import load_model

    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out")
    model = load_model(cfg.model, cfg.finetuning, is_trainable=True)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")}
    assert len(adapted) == 14 and all(".language_model.layers." in name for name in adapted)
    unfrozen = cfg.finetuning.__class__(**{**cfg.finetuning.__dict__, "freeze_vision_tower": False})
    model = load_model(cfg.model, unfrozen, is_trainable=True)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")}
    vision = {name for name in adapted if ".visual." in name}
    assert any(".blocks." in name for name in vision)  # never the merger (projector) or patch_embed (LF)
    assert not any("visual.merger" in name or "patch_embed" in name for name in vision)
    from tuneforge.errors import ConfigError

    frozen_only = cfg.finetuning.__class__(**{**cfg.finetuning.__dict__, "lora_target": "qkv"})  # vision attention
    with pytest.raises(ConfigError, match="lora_target: qkv names no module outside the frozen parts"):
        load_model(cfg.model, frozen_only, is_trainable=True)


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(params=[("qwen3_vl", "Qwen3VLForConditionalGeneration"),
                        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
                        ("qwen2_vl", "Qwen2VLForConditionalGeneration")], ids=lambda p: p[0])
def tiny_vl_family(request, tiny_qwen3_vl_dir, tiny_tokenizer_dir, tmp_path_factory):
    family, architecture = request.param
    if family == "qwen3_vl":
        return tiny_qwen3_vl_dir, architecture
    from vision_fixtures import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tiny_tokenizer_dir, tmp_path_factory.mktemp(f"tiny_{family}"), family), architecture


def test_train_chat_export(tiny_vl_family, image_data, tmp_path, monkeypatch, capsys):
    """`tuneforge train` (LoRA, 2 steps) on image rows, a chat with the adapter (text, then about an image), and a
    merged export that plain transformers loads as an image-text model with its image processor."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    from tuneforge.cli.main import main

    tiny_qwen3_vl_dir, architecture = tiny_vl_family

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    base = {"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink"}
    train = {**base, "image_max_pixels": 262144, "video_max_pixels": 16384, "stage": "sft", "do_train": True,
             "finetuning_type": "lora", "lora_target": "all", "dataset": "mllm_demo", "dataset_dir": str(image_data),
             "cutoff_len": 512, "output_dir": str(tmp_path / "lora"), "report_to": "none",
             "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "lora" / "preprocessor_config.json").is_file()
    log = [json.loads(line) for line in (tmp_path / "lora" / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["current_steps"] for row in log if "loss" in row] == [1, 2]
    import re

    chat = ["chat", f"model_name_or_path={tiny_qwen3_vl_dir}", f"adapter_name_or_path={tmp_path / 'lora'}",
            "template=qwen3_vl_nothink", "max_new_tokens=4", "--prompt", "What is this?"]
    prompt_tokens = []
    for image in ([], ["--image", str(image_data / "images" / "img0.png")]):
        capsys.readouterr()
        assert main(chat + image) == 0
        prompt_tokens.append(int(re.search(r"prompt (\d+) tokens", capsys.readouterr().err).group(1)))
    assert prompt_tokens[1] - prompt_tokens[0] == 6  # <|vision_start|>, 4 x <|image_pad|> (64x64), <|vision_end|>
    export = {**base, "adapter_name_or_path": str(tmp_path / "lora"), "export_dir": str(tmp_path / "merged")}
    (tmp_path / "export.yaml").write_text(yaml.safe_dump(export))
    assert main(["export", str(tmp_path / "export.yaml")]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == architecture
    assert AutoImageProcessor.from_pretrained(tmp_path / "merged").merge_size == 2


def test_the_shipped_image_demo(tiny_qwen3_vl_dir, repo_root, tmp_path, monkeypatch):
    """data/mllm_demo.json (LF's `mllm_demo` entry, data/make_mllm_demo.py): every row encodes, 96x96 images -> a
    6x6 patch grid -> 9 image tokens each."""
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, repo_root / "data", tmp_path / "out")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    assert len(bundle.train) == 13
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert sorted(len(s["images"]) for s in bundle.train) == [1] * 12 + [2]
    assert all(s["input_ids"].count(pad) == 9 * len(s["images"]) for s in bundle.train)


def test_chat_about_an_image_is_transformers_generate(tiny_qwen3_vl_dir, image_data):
    """The chat engine's image prompt and greedy decoding give what transformers' own `generate` gives with the
    same ids and pixels; a text prompt after it starts from plain positions again."""
    import torch

    from tuneforge.config.parser import load_config_dict
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config_dict({"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink",
                            "do_sample": False, "max_new_tokens": 6}, require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    image = str(image_data / "images" / "img1.png")  # 96x64: 6 image tokens
    answer = engine.chat([{"role": "user", "content": "What colour is this?"}], images=[image])
    messages, pixels = [{"role": "user", "content": "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"
                         "What colour is this?"}], engine.vision.pixels([image])
    prompt = torch.tensor([engine.encode_prompt(messages)])
    marks = (prompt == engine.vision.image_token_id).long()
    with torch.inference_mode():
        out = engine.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), mm_token_type_ids=marks,
                                    max_new_tokens=6, do_sample=False, eos_token_id=list(engine.stop_ids),
                                    **pixels)
    new = [t for t in out[0, prompt.shape[1]:].tolist() if t not in engine.stop_ids]
    assert answer == engine.tokenizer.decode(new, skip_special_tokens=True)
    assert engine.last_stats.prompt_tokens == prompt.shape[1]
    offsets = [m for m in engine.model.modules() if getattr(m, "rope_deltas", None) is not None]
    assert offsets and offsets[0].rope_deltas.item() == -3  # 6 image tokens on a 2x3 grid: 3 positions fewer
    text = [{"role": "user", "content": "Hello there"}]
    assert engine.chat(text) == ChatEngine.from_config(cfg).chat(text)
    assert not [m for m in engine.model.modules() if getattr(m, "rope_deltas", None) is not None]  # cleared


# ------------------------------------------------------------------------------------- dpo
def test_padded_pair_logps_equal_the_packed_ones(tiny_llama_dir):
    """The padded layout of a vision-language model's pairs gives the packed layout's sums and counts (also
    LD-DPO's, whose positions are the padded columns, as in LF)."""
    import torch

    from tuneforge.config.args import FinetuningArguments, ModelArguments
    from tuneforge.data.collate import PaddedCollator
    from tuneforge.model.loader import load_model
    from tuneforge.train.preference import PairwisePackedCollator, sequence_logps

    model = load_model(ModelArguments(model_name_or_path=str(tiny_llama_dir)), FinetuningArguments(finetuning_type="full"),
                       is_trainable=False)
    features = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9],
                 "rejected_input_ids": [5, 6, 7, 10], "rejected_labels": [-100, -100, 7, 10]},
                {"input_ids": [11, 12, 13], "labels": [-100, 12, 13],
                 "rejected_input_ids": [11, 12, 14, 15, 16, 17], "rejected_labels": [-100, 12, 14, 15, 16, 17]}]
    packed = PairwisePackedCollator()(features)
    rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features] + \
           [{"input_ids": f["rejected_input_ids"], "labels": f["rejected_labels"]} for f in features]
    padded = PaddedCollator(pad_token_id=0)(rows)
    with torch.no_grad():
        for ld_alpha in (None, 0.5):
            sums, counts = sequence_logps(model, packed, ld_alpha=ld_alpha)
            padded_sums, padded_counts = sequence_logps(model, padded, ld_alpha=ld_alpha)
            assert counts.tolist() == padded_counts.tolist() == [3, 2, 2, 5]
            assert torch.allclose(sums, padded_sums, atol=1e-5), (sums, padded_sums)


def test_dpo_on_images(tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    """Stage dpo (LoRA, its own reference) on LF's rlhf_v layout: both answers see the image; it trains."""
    from tuneforge.cli.main import main
    from vision_fixtures import write_image_ranking_dataset

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data = write_image_ranking_dataset(tmp_path / "data")
    settings = {"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink", "stage": "dpo",
                "do_train": True, "finetuning_type": "lora", "lora_target": "all", "pref_beta": 0.1,
                "dataset": "rlhf_demo", "dataset_dir": str(data), "cutoff_len": 512, "report_to": "none",
                "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 2, "max_steps": 2,
                "logging_steps": 1, "learning_rate": 1e-3}
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(settings))
    from tuneforge.config.parser import load_config
    from tuneforge.data.collate_vision import VisionPairwiseCollator
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    cfg = load_config(tmp_path / "dpo.yaml")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage="dpo")
    batch = VisionPairwiseCollator(tokenizer.pad_token_id, bundle.vision)([bundle.train[0], bundle.train[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]] * 2
    assert batch["mm_token_type_ids"].sum(1).tolist() == [4, 6, 4, 6]  # chosen 0, 1, then rejected 0, 1
    assert main(["train", str(tmp_path / "dpo.yaml")]) == 0
    log = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    first = next(row for row in log if "loss" in row)
    assert abs(first["loss"] - 0.6931) < 1e-3  # the policy starts as its reference: -log sigmoid(0)
    assert "rewards/accuracies" in first


def test_web_ui_chat_session_about_an_image(tiny_qwen3_vl_dir, image_data):
    """The Chat tab's session: an image goes with a message as `<image>` before its text; later turns keep it."""
    from tuneforge.webui.chat import ChatSession

    session = ChatSession()
    session.load({"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink",
                  "finetuning_type": "lora", "do_sample": False, "max_new_tokens": 3})
    image = str(image_data / "images" / "img0.png")
    first = [{"role": "user", "content": session.image_tag + "What is this?"}]
    answer = "".join(session.stream(first, images=[image], do_sample=False, max_new_tokens=3))
    with_image = session.engine.last_stats.prompt_tokens
    follow = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And now?"}]
    "".join(session.stream(follow, images=[image], do_sample=False, max_new_tokens=3))
    assert session.engine.last_stats.prompt_tokens > with_image
    "".join(session.stream([{"role": "user", "content": "What is this?"}], do_sample=False, max_new_tokens=3))
    assert session.engine.last_stats.prompt_tokens == with_image - 6  # without the image's 6 tokens


def test_tokenized_path_keeps_the_images(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    """LF's `tokenized_path`: the saved samples keep their image paths and a later run gets its image settings."""
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", tokenized_path=str(tmp_path / "tokenized"))
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    first = build_datasets(cfg, tokenizer, template, stage="sft")
    again = build_datasets(cfg, tokenizer, template, stage="sft")
    assert again.vision is not None and again.train["images"] == first.train["images"]
    assert again.train["input_ids"] == first.train["input_ids"]


def test_predict_on_image_rows(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    """`do_predict` on image data (LF's prediction): each row is answered with its images; equal to a chat about
    the same image with the same settings."""
    from tuneforge.cli.main import main
    from tuneforge.config.parser import load_config_dict
    from tuneforge.infer.engine import ChatEngine

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    settings = {"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink", "stage": "sft",
                "do_predict": True, "predict_with_generate": True, "eval_dataset": "mllm_demo",
                "dataset_dir": str(image_data), "cutoff_len": 512, "output_dir": str(tmp_path / "pred"),
                "report_to": "none", "max_new_tokens": 4, "do_sample": False, "finetuning_type": "full"}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(settings))
    assert main(["train", str(tmp_path / "predict.yaml")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "pred" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["prompt"].count("<|image_pad|>") == 4
    engine = ChatEngine.from_config(load_config_dict(settings))
    chat = engine.chat([{"role": "user", "content": "<image>What colour is this?"}],
                       images=[str(image_data / "images" / "img0.png")])
    assert rows[0]["predict"] == chat


def test_api_image_parts(tiny_qwen3_vl_dir, image_data):
    """OpenAI-style `image_url` parts (data: URLs) for a Qwen-VL model: the answer is the chat's about the same
    image, usage counts the image tokens, a text request in the same batch is unaffected; other URLs are 400s."""
    import base64

    import openai

    from test_api import Served
    from tuneforge.api.server import ApiService
    from tuneforge.config.parser import load_config_dict
    from tuneforge.infer.batch_worker import BatchWorker
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config_dict({"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink",
                            "do_sample": False, "max_new_tokens": 5}, require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    image = image_data / "images" / "img1.png"
    expected = engine.chat([{"role": "user", "content": "What is this?"}], images=[str(image)])
    prompt_tokens = engine.last_stats.prompt_tokens  # with the image's 6 tokens + vision start / end
    expected_text = engine.chat([{"role": "user", "content": "Hello"}])
    server = Served(ApiService("tiny-vl", engine, BatchWorker(engine, max_batch=2)))
    try:
        client = server.client()
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        reply = client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}])
        assert reply.choices[0].message.content == expected
        text = client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": "Hello"}])
        assert text.choices[0].message.content == expected_text  # no image offset left for text prompts
        assert reply.usage.prompt_tokens == prompt_tokens
        for bad in ("https://example.com/cat.png", "file:///etc/passwd", "data:image/png;base64,@@@"):
            with pytest.raises(openai.BadRequestError, match="image_url"):
                client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": bad}}, {"type": "text", "text": "?"}]}])
    finally:
        server.close()
