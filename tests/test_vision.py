"""Images for the Qwen-VL family, the data side and the model rules (data/media.py, data/collate_vision.py,
model/vision.py), on a tiny Qwen3-VL; training, chat, dpo, predict, API: tests/test_vision_runs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vision_fixtures import write_images


def _run_config(model_dir: Path, dataset_dir: Path, out: Path, **extra):
    from tuneforge.config.parser import load_config_dict

    settings = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
                "lora_target": "all", "dataset": "mllm_demo", "dataset_dir": str(dataset_dir),
                "template": "qwen3_vl_nothink", "cutoff_len": 512, "output_dir": str(out), "report_to": "none",
                "per_device_train_batch_size": 2, "max_steps": 2, "overwrite_output_dir": True, **extra}
    return load_config_dict(settings)


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

    from tuneforge.data.media import VisionInputs
    from tuneforge.utils.vision_models import read_model_config

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
    ({"stage": "pt"}, "stage `pt` with a vision-language model is not supported yet"),
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


def test_packed_rows_carry_their_samples_images_and_the_first_sample_reads_as_alone(tiny_qwen3_vl_dir, image_data,
                                                                                   tmp_path, monkeypatch):
    """`packing: true` (LF's rows, not neat): a row is one sequence with its samples' images in row order; the model
    derives the 3-D positions over the whole row, so its first sample gets the logits it gets alone."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    samples_cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out")
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", packing=True, cutoff_len=160)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    samples = build_datasets(samples_cfg, tokenizer, template, stage="sft").train
    rows = build_datasets(cfg, tokenizer, template, stage="sft").train
    assert 1 < len(rows) < len(samples) == 6
    by_ids = {tuple(s["input_ids"]): s for s in samples}
    collator = workflow.sft_batch_collator(cfg, tokenizer, None, build_datasets(cfg, tokenizer, template).vision)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir).eval()
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        parts = [by_ids[tuple(row["input_ids"][a:b])] for a, b in zip(starts, starts[1:])]  # each an encoded sample
        assert row["images"] == [path for part in parts for path in part["images"]]
        packed, alone = collator([row]), collator([parts[0]])
        assert packed["image_grid_thw"].shape[0] == len(row["images"])
        with torch.no_grad():
            first = model(**packed).logits[0, :starts[1]]
            torch.testing.assert_close(first, model(**alone).logits[0], atol=1e-5, rtol=1e-4)


def test_neat_packed_batches_give_every_sample_the_logits_it_gets_alone(tiny_qwen3_vl_dir, image_data, tmp_path,
                                                                           monkeypatch):
    """`neat_packing` (LF: per-sample positions, no attention across samples): a batch's rows become one row; every
    sample gets its own 3-D positions (the model's rope index on the sample and its images) and sees only itself."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    samples_cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out")
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", neat_packing=True, cutoff_len=160)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    samples = {tuple(s["input_ids"]): s for s in build_datasets(samples_cfg, tokenizer, template, stage="sft").train}
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir).eval()
    neat = workflow.sft_batch_collator(cfg, tokenizer, model, bundle.vision)
    alone = workflow.sft_batch_collator(samples_cfg, tokenizer, model, bundle.vision)
    batch = neat([bundle.train[0], bundle.train[1]])
    assert batch["position_ids"].shape == (4, 1, batch["input_ids"].shape[1]) and "attention_mask" not in batch
    ids, text_positions = batch["input_ids"][0].tolist(), batch["position_ids"][0, 0].tolist()
    starts = [i for i, p in enumerate(text_positions) if p == 0] + [len(ids)]
    assert len(starts) - 1 >= 3  # the two rows' samples (of 6)
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits[0]  # training runs without a cache: the packed mask
        for start, end in zip(starts, starts[1:]):
            own = alone([samples[tuple(ids[start:end])]])
            torch.testing.assert_close(logits[start:end], model(**own).logits[0], atol=1e-5, rtol=1e-4)
            assert batch["labels"][0, start] == -100  # never predicted from the sample before it


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


def test_data_check_on_image_rows(tiny_qwen3_vl_dir, repo_root, tmp_path, monkeypatch):
    """`tuneforge data check`: rows asking the same words about different images are not duplicates or conflicts,
    nor a near-duplicate cluster; their image tokens count toward the lengths, as in training."""
    from tuneforge.config.parser import load_config_dict
    from tuneforge.data.check import run_check
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = load_config_dict({"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink",
                            "dataset": "mllm_demo", "dataset_dir": str(repo_root / "data")}, require_output_dir=False)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    report = run_check(cfg, tokenizer, template)
    kinds = {finding.kind for finding in report.findings}
    assert not kinds & {"duplicate", "conflict", "near_duplicates", "fact_data"}, kinds
    # the longest prompt, the two-image row: 65 tokens with its 2 x 11 image tokens, 61 with `<image>` as text
    assert report.tokens["prompt"]["max"] == 65


def test_image_max_pixels_from_the_config_reaches_the_encoding(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    """`image_max_pixels: 1024` (LF's key) shrinks every image first: 64x64 and 96x64 become one merged patch (1
    token instead of 4 and 6), 40x120 -> 18x55 -> 28x55 (sides >= 28) -> a 4x2 patch grid (2 tokens instead of 4)."""
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", image_max_pixels=1024)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert [s["input_ids"].count(pad) for s in bundle.train] == [1, 1, 2, 1, 1, 2 + 1]  # rows: img 0 1 2 0 1 (2+0)


def test_recall_target_on_image_data_needs_a_vision_language_model(image_data, tmp_path):
    """The train-until-learned check of image rows reads their images (tests/test_vision_runs.py); without a
    vision-language model's image settings it says why it cannot."""
    from tuneforge.config.parser import load_config
    from tuneforge.errors import NotSupportedError
    from tuneforge.train.recall_stop import recall_check_samples

    config = {"model_name_or_path": "m", "stage": "sft", "do_train": True, "dataset": "mllm_demo",
              "dataset_dir": str(image_data), "output_dir": str(tmp_path / "out"), "recall_target": 0.9}
    (tmp_path / "train.yaml").write_text(json.dumps(config))
    with pytest.raises(NotSupportedError, match="`recall_target` on .*mllm_demo.* \\(it has images\\) needs a "
                                                "vision-language model"):
        recall_check_samples(load_config(str(tmp_path / "train.yaml")), tokenizer=None, template=None)


def test_streamed_image_rows_are_the_encoded_ones(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch):
    """`streaming: true` with images: the streamed samples are the cached encoding's (ids, labels, image files), and
    the bundle carries the image settings its collator needs."""
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    samples = {}
    for streaming in (False, True):
        cfg = _run_config(tiny_qwen3_vl_dir, image_data, tmp_path / "out", streaming=streaming)
        tokenizer, template = workflow.load_tokenizer_and_template(cfg)
        bundle = build_datasets(cfg, tokenizer, template, stage="sft")
        assert bundle.vision is not None
        samples[streaming] = sorted((tuple(row["input_ids"]), tuple(row["labels"]), tuple(row["images"]))
                                    for row in bundle.train)
    assert len(samples[True]) == 6 and samples[True] == samples[False]
    assert sum(len(images) for _, _, images in samples[True]) == 7  # one row shows two images

    from tuneforge.cli.main import main

    settings = {"model_name_or_path": str(tiny_qwen3_vl_dir), "stage": "sft", "do_train": True, "streaming": True,
                "finetuning_type": "lora", "lora_target": "all", "dataset": "mllm_demo", "dataset_dir": str(image_data),
                "template": "qwen3_vl_nothink", "cutoff_len": 512, "output_dir": str(tmp_path / "run"),
                "report_to": "none", "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1}
    (tmp_path / "run.yaml").write_text(json.dumps(settings))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0  # the streamed batches carry their pixels
    log = (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["current_steps"] for line in log if '"loss"' in line] == [1, 2]
