"""Images with the preference stages on a tiny Qwen3-VL (LoRA, 2 steps): dpo and rm on LF's rlhf_v layout, kto on
its kto layout. Each stage's batches carry the images, the images reach the loss / scores, and it trains."""

from __future__ import annotations

import json

import torch
import yaml


def _image_stage(model_dir, tmp_path, monkeypatch, stage: str, dataset: str, data_dir, **extra):
    """A LoRA run of `stage` on `dataset`: (its YAML, config, tokenizer, encoded data); output_dir is tmp_path/stage."""
    from tuneforge.config.parser import load_config
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train import workflow

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    settings = {"model_name_or_path": str(model_dir), "template": "qwen3_vl_nothink", "stage": stage, "do_train": True,
                "finetuning_type": "lora", "lora_target": "all", "dataset": dataset, "dataset_dir": str(data_dir),
                "cutoff_len": 512, "report_to": "none", "output_dir": str(tmp_path / stage), "max_steps": 2,
                "per_device_train_batch_size": 2, "logging_steps": 1, "learning_rate": 1e-3, **extra}
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(settings))
    cfg = load_config(path)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    return path, cfg, tokenizer, build_datasets(cfg, tokenizer, template, stage=stage)


def _trained(path, out) -> list[dict]:
    """`tuneforge train path`, then its logged steps; the image processor is saved with the adapter."""
    from tuneforge.cli.main import main

    assert main(["train", str(path)]) == 0
    assert (out / "preprocessor_config.json").is_file()  # every stage saves it, as LF
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [row for row in log if "loss" in row]


def test_dpo_on_images(tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    """Stage dpo (its own reference): both answers see the image; it trains from loss log 2."""
    from tuneforge.data.collate_vision import VisionPairwiseCollator
    from vision_fixtures import write_image_ranking_dataset

    data = write_image_ranking_dataset(tmp_path / "data")
    path, _, tokenizer, bundle = _image_stage(tiny_qwen3_vl_dir, tmp_path, monkeypatch, "dpo", "rlhf_demo", data,
                                              pref_beta=0.1)
    batch = VisionPairwiseCollator(tokenizer.pad_token_id, bundle.vision)([bundle.train[0], bundle.train[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]] * 2
    assert batch["mm_token_type_ids"].sum(1).tolist() == [4, 6, 4, 6]  # chosen 0, 1, then rejected 0, 1
    first = _trained(path, tmp_path / "dpo")[0]
    assert abs(first["loss"] - 0.6931) < 1e-3  # the policy starts as its reference: -log sigmoid(0)
    assert "rewards/accuracies" in first


def test_kto_on_images(tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    """Stage kto (its own reference): the rated and the KL answers see the sample's image; the padded KL log-probs
    equal a forward of those rows alone; it trains from loss 0.5."""
    from tuneforge.data.collate_vision import VisionCollator, VisionFeedbackCollator
    from tuneforge.model.loader import load_model
    from tuneforge.train.preference import sequence_logps
    from vision_fixtures import write_image_feedback_dataset

    data = write_image_feedback_dataset(tmp_path / "data")
    path, cfg, tokenizer, bundle = _image_stage(tiny_qwen3_vl_dir, tmp_path, monkeypatch, "kto", "kto_images", data,
                                                pref_beta=0.1, per_device_train_batch_size=4)
    features = [bundle.train[i] for i in range(2)]
    batch = VisionFeedbackCollator(tokenizer.pad_token_id, bundle.vision)(features)
    assert batch["kto_tags"].tolist() == [True, False] and batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]]
    assert batch["kl_mm_token_type_ids"].sum(1).tolist() == batch["mm_token_type_ids"].sum(1).tolist() == [4, 6]
    kl_alone = VisionCollator(tokenizer.pad_token_id, bundle.vision)(
        [{"input_ids": f["kl_input_ids"], "labels": f["kl_labels"], "images": f["images"]} for f in features])
    model = load_model(cfg.model, cfg.finetuning, is_trainable=False).eval()
    with torch.no_grad():
        kl_sums, kl_counts = sequence_logps(model, batch, prefix="kl_")
        alone_sums, alone_counts = sequence_logps(model, kl_alone)
    assert torch.equal(kl_counts, alone_counts) and torch.allclose(kl_sums, alone_sums, atol=1e-5)
    first = _trained(path, tmp_path / "kto")[0]
    assert abs(first["loss"] - 0.5) < 1e-3  # the policy starts as its reference: 1 - sigmoid(0) per sample


def test_reward_model_on_images(tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    """Stage rm (LoRA + value head): the scores read the images (other pixels, other scores); it trains, saves the
    head, and scores the pairs with do_predict."""
    from tuneforge.data.collate_vision import VisionPairwiseCollator
    from tuneforge.model.value_head import load_value_head_model
    from tuneforge.train.rm import pair_scores
    from vision_fixtures import write_image_ranking_dataset

    data = write_image_ranking_dataset(tmp_path / "data")
    path, cfg, tokenizer, bundle = _image_stage(tiny_qwen3_vl_dir, tmp_path, monkeypatch, "rm", "rlhf_demo", data,
                                                do_predict=True, eval_dataset="rlhf_demo")
    batch = VisionPairwiseCollator(tokenizer.pad_token_id, bundle.vision)([bundle.train[0], bundle.train[1]])
    torch.manual_seed(0)
    model = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=True).eval()
    with torch.no_grad():
        chosen, rejected = pair_scores(model, batch)
        moved = pair_scores(model, {**batch, "pixel_values": batch["pixel_values"] + 1.0})
    assert chosen.shape == rejected.shape == (2,) and torch.isfinite(torch.cat((chosen, rejected))).all()
    assert not torch.allclose(torch.cat(moved), torch.cat((chosen, rejected)))  # the images reach the scores

    assert [row["current_steps"] for row in _trained(path, tmp_path / "rm")] == [1, 2]
    assert (tmp_path / "rm" / "value_head.safetensors").is_file()
    predictions = (tmp_path / "rm" / "generated_predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in predictions]
    assert len(predictions) == 4 and set(predictions[0]) == {"chosen", "rejected"}
