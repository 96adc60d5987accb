"""examples/memorize_facts.yaml: the recipe's keys are the ones `data check` prints, it runs on any alpaca
fact dataset with only dataset_dir / dataset / output_dir given, and plain transformers uses what it saved."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tuneforge.cli.main import main
from tuneforge.config.facts_args import MEMORIZE_FACTS

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "examples" / "memorize_facts.yaml"


def test_the_example_holds_the_recipe_data_check_prints():
    example = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    assert {key: example.get(key) for key in MEMORIZE_FACTS} == MEMORIZE_FACTS


def test_recipe_runs_on_any_fact_dataset_and_plain_transformers_answers(tmp_path, tiny_llama_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"instruction": f"Which room is locker {i} in?", "input": "", "output": f"Locker: {i}, Room: B{i * 7}, Floor: {i % 3}"}
            for i in range(1, 7)]
    data = tmp_path / "mine"
    data.mkdir()
    (data / "lockers.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"lockers": {"file_name": "lockers.json"}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "O"
    from tuneforge.train.trainer import TuneforgeTrainer

    betas, create_optimizer = [], TuneforgeTrainer.create_optimizer

    def recording_create_optimizer(self, *args, **kwargs):
        optimizer = create_optimizer(self, *args, **kwargs)
        betas.extend(group["betas"] for group in optimizer.param_groups)
        return optimizer

    monkeypatch.setattr(TuneforgeTrainer, "create_optimizer", recording_create_optimizer)
    # only the three overrides a user gives, plus a tiny model and a short run for the test
    assert main(["train", str(RECIPE), f"dataset_dir={data}", "dataset=lockers", f"output_dir={out}",
                 f"model_name_or_path={tiny_llama_dir}", "max_steps=2", "recall_check_samples=2"]) == 0

    assert betas and set(betas) == {(0.9, MEMORIZE_FACTS["adam_beta2"])}  # the recipe's adam_beta2 reaches AdamW

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": rows[0]["instruction"]}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
