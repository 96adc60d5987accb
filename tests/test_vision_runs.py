"""Images for the Qwen-VL family end to end on tiny models: train -> chat -> export (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL), chat parity with transformers' generate, eval recall, do_predict, the web UI's chat session and the API
(the preference stages: tests/test_vision_stages.py)."""

from __future__ import annotations

import json

import pytest
import yaml


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(params=[("qwen3_vl", "Qwen3VLForConditionalGeneration"),
                        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
                        ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
                        ("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration")], ids=lambda p: p[0])
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


def test_recall_asks_each_image_row_with_its_images(tiny_qwen3_vl_dir, tiny_llama_dir, image_data, tmp_path,
                                                    monkeypatch):
    """`eval recall` on image rows: each training question goes to the model with its own image(s) (the answer is the
    chat engine's greedy answer to that question and image); a text model is refused before any model loads."""
    from tuneforge.config.parser import load_config
    from tuneforge.errors import DataError
    from tuneforge.evaluate.recall import RecallOptions, run_recall
    from tuneforge.evaluate.recall_data import training_questions
    from tuneforge.infer.engine import ChatEngine

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    config = {"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink", "stage": "sft",
              "do_train": True, "finetuning_type": "full", "dataset": "mllm_demo", "dataset_dir": str(image_data),
              "cutoff_len": 512, "output_dir": str(tmp_path / "out"), "report_to": "none"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(str(tmp_path / "train.yaml"))
    questions, skipped = training_questions(cfg)
    assert skipped == 0 and [len(q.images) for q in questions] == [1, 1, 1, 1, 1, 2]
    assert questions[1].images == (str((image_data / "images" / "img1.png").resolve()),)

    results = run_recall(cfg, RecallOptions(samples=3, seed=0, drift=False, output=str(tmp_path / "r.json")),
                         emit=lambda line: None)
    rows = results["recall"]["rows"]
    assert len(rows) == 3 and "skipped" in results["heldout"]  # no key:value answers
    engine = ChatEngine.from_config(cfg)
    asked = {q.source: q for q in questions}
    for row in rows:
        item = asked[row["source"]]
        budget = len(engine.tokenizer.encode(item.expected, add_special_tokens=False)) + 8
        text_only = [{"role": "user", "content": item.question.replace("<image>", "")}]
        engine.chat(text_only, do_sample=False, max_new_tokens=1)
        without_images = engine.last_stats.prompt_tokens
        alone = engine.chat([{"role": "user", "content": item.question}], images=item.images, do_sample=False,
                            max_new_tokens=budget)
        assert row["answer"] == alone
        assert engine.last_stats.prompt_tokens - without_images >= 6 * len(item.images)  # the images' tokens

    text_model = load_config(str(tmp_path / "train.yaml"), [f"model_name_or_path={tiny_llama_dir}"])
    with pytest.raises(DataError, match="has images but the model .* does not take images"):
        run_recall(text_model, RecallOptions(drift=False), emit=lambda line: None)


def test_beam_search_about_an_image_is_transformers_generate(tiny_qwen3_vl_dir, image_data):
    """num_beams > 1 with images: every beam sees the pixels (transformers' generate with the same ids and pixels
    gives the same answer; another image gives another one)."""
    import torch

    from tuneforge.config.parser import load_config_dict
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config_dict({"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink",
                            "do_sample": False, "num_beams": 3, "max_new_tokens": 6}, require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    question = [{"role": "user", "content": "What colour is this?"}]
    images = [str(image_data / "images" / f"img{i}.png") for i in range(3)]
    answers = [engine.chat(question, images=[image]) for image in images]
    expanded = [{"role": "user", "content": "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"
                 "What colour is this?"}]  # img1.png, 96x64: 6 image tokens
    pixels = engine.vision.pixels([images[1]])
    prompt = torch.tensor([engine.encode_prompt(expanded)])
    with torch.inference_mode():
        out = engine.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                    mm_token_type_ids=(prompt == engine.vision.image_token_id).long(), num_beams=3,
                                    do_sample=False, eos_token_id=list(engine.stop_ids), **pixels)
    new = [t for t in out[0, prompt.shape[1]:].tolist() if t not in engine.stop_ids]
    assert answers[1] == engine.tokenizer.decode(new, skip_special_tokens=True)
    assert len(set(answers)) > 1


def test_train_until_learned_on_image_rows(tiny_qwen3_vl_dir, image_data, tmp_path, monkeypatch, capsys):
    """`recall_target` on image rows: the check reads each sample with its images. The rows ask the same question
    about different images ("It is colour number k." for image k), so only a model that reads the pixels can
    reproduce them all; when the check says 100%, the chat engine's greedy answers with the images are the training
    answers, and the same samples with their images rotated are not all reproduced."""
    from pathlib import Path

    from tuneforge.cli.main import main
    from tuneforge.config.parser import load_config
    from tuneforge.data.collate_vision import VisionCollator
    from tuneforge.data.media import VisionInputs
    from tuneforge.infer.engine import ChatEngine
    from tuneforge.model.loader import load_model
    from tuneforge.train import workflow
    from tuneforge.train.recall_stop import recall_check_samples, teacher_forced_exact

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    config = {"model_name_or_path": str(tiny_qwen3_vl_dir), "template": "qwen3_vl_nothink", "stage": "sft",
              "do_train": True, "finetuning_type": "full", "dataset": "mllm_demo", "dataset_dir": str(image_data),
              "cutoff_len": 160, "output_dir": str(tmp_path / "full"), "report_to": "none", "learning_rate": 1e-2,
              "per_device_train_batch_size": 2, "num_train_epochs": 40, "recall_target": 1.0,
              "recall_check_epochs": 2, "logging_steps": 1}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    assert "6/6 training answers reproduced exactly (100%" in capsys.readouterr().out
    state = json.loads((tmp_path / "full" / "trainer_state.json").read_text())
    assert state["global_step"] < 40 * 3  # stopped by the rule

    trained = load_config(str(tmp_path / "train.yaml"), [f"model_name_or_path={tmp_path / 'full'}"])
    engine = ChatEngine.from_config(trained)
    data = json.loads((image_data / "mllm_demo.json").read_text())
    for row in data:
        images = [str(image_data / path) for path in row["images"]]
        answer = engine.chat(row["messages"][:1], images=images, do_sample=False, max_new_tokens=48)
        assert answer == row["messages"][1]["content"]

    tokenizer, template = workflow.load_tokenizer_and_template(trained)
    vision = VisionInputs.for_run(trained.model, trained.data, tokenizer, tmp_path)
    samples = recall_check_samples(trained, tokenizer, template, vision)
    model = load_model(trained.model, trained.finetuning, is_trainable=False)
    collator = VisionCollator(tokenizer.pad_token_id, vision)
    assert all(teacher_forced_exact(model, samples, image_collator=collator))
    # img0 and img2 give the same number of image tokens: swap them between the rows that show one of them
    swap = {"img0.png": "img2.png", "img2.png": "img0.png"}
    swapped = [dict(s, images=[s["images"][0].replace(Path(s["images"][0]).name, swap[Path(s["images"][0]).name])])
               for s in samples if len(s["images"]) == 1 and Path(s["images"][0]).name in swap]
    assert len(swapped) == 3 and not any(teacher_forced_exact(model, swapped, image_collator=collator))
