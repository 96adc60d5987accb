"""A tiny Qwen3-VL model folder (random weights, the tiny test tokenizer plus the Qwen-VL vision tokens, a PIL
image processor) and small generated images: what the vision tests train and chat with. Nothing from a hub."""

from __future__ import annotations

import json
from pathlib import Path

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
PATCH, MERGE, TEMPORAL = 16, 2, 2


def build_tiny_qwen_vl(tokenizer_dir: Path, out_dir: Path, family: str = "qwen3_vl") -> Path:
    """A tiny random Qwen3-VL (or `family` qwen3_vl_moe; qwen2_5_vl / qwen2_vl: 14-pixel patches, Qwen2.5's window
    attention)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    ids = dict(zip(VISION_TOKENS, tokenizer.convert_tokens_to_ids(VISION_TOKENS)))
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                  spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        if family == "qwen3_vl":
            from transformers import Qwen3VLConfig as Config, Qwen3VLForConditionalGeneration as Model
        else:  # 4 experts, 2 per token, in every layer
            from transformers import Qwen3VLMoeConfig as Config, Qwen3VLMoeForConditionalGeneration as Model

            text.update(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)
        patch = PATCH
        text.update(head_dim=8, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2],
                                              "mrope_interleaved": True})
        vision.update(patch_size=patch, num_position_embeddings=64, deepstack_visual_indexes=[1])
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model

        patch = 14
        text.update(rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
        vision.update(patch_size=patch, window_size=56, fullatt_block_indexes=[1])
    else:  # qwen2_vl: the original ViT config (embed_dim, mlp_ratio)
        from transformers import Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model

        patch = 14
        text.update(rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
        vision = dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=4, patch_size=patch,
                      spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)
    config = Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
    torch.manual_seed(0)
    Model(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(patch_size=patch, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                             min_pixels=32 * 32, max_pixels=128 * 128).save_pretrained(out_dir)
    return out_dir


def write_images(folder: Path, sizes=((64, 64), (96, 64), (40, 120))) -> list[str]:
    """Small RGB images with a colour per file: `img0.png` ... (names relative to `folder`)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, size in enumerate(sizes):
        name = f"img{i}.png"
        Image.new("RGB", size, ((60 * i) % 256, 120, 200 - 40 * i)).save(folder / name)
        names.append(name)
    return names


MLLM_DEMO_ENTRY = {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant"}}  # LF's data/dataset_info.json entry


def write_image_dataset(dataset_dir: Path, rows: int = 6, info: bool = True) -> Path:
    """`dataset_dir` with LF's `mllm_demo` entry (sharegpt, role/content tags, an `images` column; with `info`) and
    rows that each show one of the images, one with two."""
    names = write_images(dataset_dir / "images")
    data = []
    for i in range(rows):
        two = i == rows - 1
        images = [f"images/{names[i % len(names)]}"] + ([f"images/{names[0]}"] if two else [])
        question = "<image>What colour is this?" + (" And <image> this?" if two else "")
        data.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": f"It is colour number {i % len(names)}."}],
                     "images": images})
    (dataset_dir / "mllm_demo.json").write_text(json.dumps(data), encoding="utf-8")
    if info:
        (dataset_dir / "dataset_info.json").write_text(json.dumps({"mllm_demo": MLLM_DEMO_ENTRY}), encoding="utf-8")
    return dataset_dir


RANKING_ENTRY = {"file_name": "rlhf_demo.json", "formatting": "sharegpt", "ranking": True,
                 "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                             "images": "images"}}  # LF's `rlhf_v` entry, as a local file


def write_image_ranking_dataset(dataset_dir: Path, rows: int = 4) -> Path:
    """LF's `rlhf_v` layout (sharegpt `from`/`value`, chosen / rejected answers, an `images` column), registered as
    `rlhf_demo` next to whatever dataset_info.json already holds."""
    names = write_images(dataset_dir / "images")
    data = [{"conversations": [{"from": "human", "value": "<image>What colour is this?"}],
             "chosen": {"from": "gpt", "value": f"It is colour number {i % len(names)}."},
             "rejected": {"from": "gpt", "value": "I cannot see any image."},
             "images": [f"images/{names[i % len(names)]}"]} for i in range(rows)]
    (dataset_dir / "rlhf_demo.json").write_text(json.dumps(data), encoding="utf-8")
    info_file = dataset_dir / "dataset_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.exists() else {}
    info_file.write_text(json.dumps({**info, "rlhf_demo": RANKING_ENTRY}), encoding="utf-8")
    return dataset_dir


FEEDBACK_ENTRY = {**MLLM_DEMO_ENTRY, "file_name": "kto_images.json",
                  "columns": {"messages": "messages", "kto_tag": "label", "images": "images"}}  # LF's kto layout


def write_image_feedback_dataset(dataset_dir: Path, rows: int = 4) -> Path:
    """kto rows about the images (LF's `kto_en_demo` layout + an `images` column), right and wrong answers
    alternating, registered as `kto_images` next to whatever dataset_info.json already holds."""
    names = write_images(dataset_dir / "images")
    data = [{"messages": [{"role": "user", "content": "<image>What colour is this?"},
                          {"role": "assistant", "content": f"It is colour number {i % len(names)}."
                           if i % 2 == 0 else "I cannot see any image."}],
             "label": i % 2 == 0, "images": [f"images/{names[i % len(names)]}"]} for i in range(rows)]
    (dataset_dir / "kto_images.json").write_text(json.dumps(data), encoding="utf-8")
    info_file = dataset_dir / "dataset_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.exists() else {}
    info_file.write_text(json.dumps({**info, "kto_images": FEEDBACK_ENTRY}), encoding="utf-8")
    return dataset_dir
