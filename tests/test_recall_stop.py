"""Train until learned: the teacher-forced check equals greedy decoding, the stop rule stops, a run that
does not reach its target says so, and `augment_facts` reaches the training data."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, TrainingArguments

from conftest import write_workspace
from tuneforge.cli.main import main
from tuneforge.train.recall_stop import RecallStopCallback, teacher_forced_exact

ROWS = [{"instruction": f"学校{i}号学生的成绩是多少？", "input": "", "output": f"姓名:学生{i}, 学号:{i}, 数学:{60 + i}"}
        for i in range(1, 9)]


def _greedy_sample(model, prompt: list[int], new_tokens: int = 6) -> dict[str, list[int]]:
    """A sample whose answer is exactly what the model generates greedily after `prompt`."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
    ids = out[0].tolist()
    return {"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt):]}


def test_teacher_forced_exact_is_greedy_exact(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    samples = [_greedy_sample(model, [5, 17, 42, 9]), _greedy_sample(model, [3, 250, 11])]
    assert teacher_forced_exact(model, samples) == [True, True]
    wrong = dict(samples[0], labels=samples[0]["labels"][:-1] + [(samples[0]["labels"][-1] + 1) % 300])
    assert teacher_forced_exact(model, [wrong, samples[1]]) == [False, True]
    assert not model.training  # the model's mode is restored
    model.train()
    teacher_forced_exact(model, samples)
    assert model.training


def test_stop_rule_stops_at_the_target_and_records_every_check(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    good = [_greedy_sample(model, [5, 17, 42, 9]), _greedy_sample(model, [3, 250, 11])]
    bad = dict(good[0], labels=good[0]["labels"][:-1] + [(good[0]["labels"][-1] + 1) % 300])
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback = RecallStopCallback([bad, good[1]], target=0.9, every_epochs=1.0)
    state, control = TrainerState(), TrainerControl()
    state.epoch, state.global_step = 0.5, 4
    callback.on_step_end(args, state, control, model=model)
    assert callback.history == []  # not at an epoch boundary yet
    state.epoch, state.global_step = 1.0, 8
    callback.on_step_end(args, state, control, model=model)
    assert callback.history == [{"current_steps": 8, "epoch": 1.0, "recall": 0.5}] and not control.should_training_stop
    callback.samples = good
    state.epoch, state.global_step = 2.0, 16
    callback.on_step_end(args, state, control, model=model)
    assert control.should_training_stop and control.should_save
    assert callback.summary() == {"recall": 1.0, "recall_best": 1.0, "recall_target_reached": True}
    # a run that saves no checkpoints stops without one (its model is saved as the run ends)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no")
    control = TrainerControl()
    state.epoch, state.global_step = 3.0, 24
    callback.on_step_end(args, state, control, model=model)
    assert control.should_training_stop and not control.should_save


def test_a_resumed_run_checks_at_the_next_boundary_not_at_its_first_step(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    good = [_greedy_sample(model, [5, 17, 42, 9])]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback = RecallStopCallback(good, target=2.0, every_epochs=0.5)  # a target never reached: every check recorded
    state, control = TrainerState(), TrainerControl()
    state.epoch, state.max_steps = 3.0, 100  # resumed from a checkpoint at epoch 3.0
    callback.on_train_begin(args, state, control)
    for state.global_step, state.epoch in ((340, 3.01), (380, 3.4), (396, 3.5), (400, 3.55), (453, 4.0)):
        callback.on_step_end(args, state, control, model=model)
    assert [record["epoch"] for record in callback.history] == [3.5, 4.0]


def test_a_run_resumed_after_the_switch_goes_on_in_float32(tmp_path):
    """The switch is kept in the Trainer state's log history (saved with each checkpoint); a run resumed from a
    checkpoint after it switches at its start, one from before it does not."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    for checkpoint_step, expected in ((339, [339]), (300, [])):
        switches = []
        callback = RecallStopCallback([], target=0.95, every_epochs=0.5, float32_from=0.8,
                                      to_float32=lambda: switches.append(True) or True)
        state = TrainerState(global_step=checkpoint_step, epoch=checkpoint_step / 113, max_steps=565)
        state.log_history = [{"loss": 0.04, "step": 330}, {"float32_after_this_step": True, "step": 339}]
        callback.on_train_begin(args, state, TrainerControl())
        assert (callback.float32_after_step, len(switches)) == ((expected or [None])[0], len(expected))


def test_a_check_that_cannot_reach_the_target_ends_early(tiny_llama_dir, tmp_path, monkeypatch):
    from tuneforge.train import recall_stop

    monkeypatch.setattr(recall_stop, "CHECK_BATCH", 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    good = [_greedy_sample(model, [5, 17, 42, 9]), _greedy_sample(model, [3, 250, 11])]
    bad = [dict(g, labels=g["labels"][:-1] + [(g["labels"][-1] + 1) % 300]) for g in good]
    assert teacher_forced_exact(model, bad + good, max_misses=1) == [False, False]
    assert teacher_forced_exact(model, good + bad, max_misses=1) == [True, True, False, False]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback = RecallStopCallback(bad + good, target=0.75, every_epochs=1.0)
    assert callback.allowed_misses() == 1
    state, control = TrainerState(), TrainerControl()
    state.epoch, state.global_step, state.max_steps = 1.0, 8, 16
    callback.on_step_end(args, state, control, model=model)
    assert callback.history[-1] == {"current_steps": 8, "epoch": 1.0, "recall": 0.0, "recall_asked": 2}
    state.epoch, state.global_step = 2.0, 16  # the run's last check asks every sample
    callback.on_step_end(args, state, control, model=model)
    assert callback.history[-1] == {"current_steps": 16, "epoch": 2.0, "recall": 0.5}
    assert not control.should_training_stop


@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "facts", "dataset_dir": "data", "template": "chatml", "cutoff_len": 96, "output_dir": "out",
              "logging_steps": 1, "save_strategy": "no", "per_device_train_batch_size": 4, "learning_rate": 1e-3,
              "num_train_epochs": 2, "report_to": "none", "augment_facts": True, "recall_target": 1.0,
              "recall_check_samples": 4}
    return write_workspace(tmp_path, monkeypatch, ROWS, "facts", config, "train.yaml")


def test_run_that_misses_its_target_says_so(workspace, capsys):
    assert main(["train", "train.yaml"]) == 0
    printed = capsys.readouterr().out
    assert "recall check (epoch 1.00): 0/4 training answers reproduced exactly (0%; target 100%)" in printed
    assert "recall target 100% NOT reached within the training budget: best 0% at epoch" in printed
    records = [json.loads(line) for line in (workspace / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "recall" in r] == [1.0, 2.0]
    report = json.loads((workspace / "out" / "data_report.json").read_text())
    assert any("augment_facts added" in note for note in report["notes"])
    results = json.loads((workspace / "out" / "all_results.json").read_text())
    assert results["recall_target_reached"] is False


def test_continue_in_float32_turns_both_autocasts_off(tiny_llama_dir, tmp_path):
    """accelerate's autocast around model.forward and accelerator.autocast() (tuneforge's loss paths): bf16 before,
    float32 after; a float32 run has nothing to switch."""
    from transformers import Trainer

    from tuneforge.train.precision_switch import computes_in_mixed_precision, continue_in_float32

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                          bf16=True))
    trainer.model_wrapped = trainer.accelerator.prepare_model(model)
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    ids = torch.tensor([[5, 17, 42, 9]])

    def forward_and_loss_path():
        trainer.model_wrapped(input_ids=ids)
        with trainer.accelerator.autocast():
            model(input_ids=ids)

    forward_and_loss_path()
    assert seen == [torch.bfloat16, torch.bfloat16] and computes_in_mixed_precision(trainer)
    assert continue_in_float32(trainer)
    seen.clear()
    forward_and_loss_path()
    assert seen == [torch.float32, torch.float32] and not computes_in_mixed_precision(trainer)
    assert not continue_in_float32(trainer)  # already float32


def test_float32_from_recall_switches_a_bf16_run_at_the_first_check_that_reaches_it(workspace, capsys, monkeypatch):
    """The checks (scripted here) give 0%, 50%, 75%, ...: a bf16 run computes its steps under autocast until the
    check at 50% and in float32 after it, and says so in its log and results."""
    import yaml

    from tuneforge.train import loss, recall_stop

    hits, autocast_in_check = iter([0, 2, 3, 3]), []

    def scripted_check(model, samples, **kwargs):
        autocast_in_check.append(torch.is_autocast_enabled("cpu"))
        count = next(hits)
        return [i < count for i in range(len(samples))]

    monkeypatch.setattr(recall_stop, "teacher_forced_exact", scripted_check)
    autocast_per_step = []
    real_loss = loss.chunked_causal_lm_loss

    def recording_loss(*args, **kwargs):
        autocast_per_step.append(torch.is_autocast_enabled("cpu"))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr("tuneforge.train.trainer.chunked_causal_lm_loss", recording_loss)
    config = yaml.safe_load((workspace / "train.yaml").read_text())
    config.update(bf16=True, num_train_epochs=4, float32_from_recall=0.5, augment_facts=False, save_strategy="steps",
                  save_steps=3, per_device_train_batch_size=8)  # 8 rows: one step per epoch, a check after each
    (workspace / "train.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["train", "train.yaml"]) == 0
    assert autocast_per_step == [True, True, False, False]
    assert autocast_in_check == [True, True, False, False]  # the checks compute as the steps before them
    printed = capsys.readouterr().out
    assert "float32_from_recall 50% reached: mixed precision off, float32 from step 3 on" in printed
    records = [json.loads(line) for line in (workspace / "out" / "trainer_log.jsonl").read_text().splitlines()]
    checks = [(r["epoch"], r["recall"], r.get("float32_after_this_step", False)) for r in records if "recall" in r]
    assert checks == [(1.0, 0.0, False), (2.0, 0.5, True), (3.0, 0.75, False), (4.0, 0.75, False)]
    assert json.loads((workspace / "out" / "all_results.json").read_text())["float32_after_step"] == 2
    state = json.loads((workspace / "out" / "trainer_state.json").read_text())
    assert {"float32_after_this_step": True, "step": 2} in state["log_history"]

    # resumed from its step-3 checkpoint with two more epochs: float32 from the start (no check passes 50% now)
    hits, autocast_per_step[:] = iter([0, 0, 0]), []
    assert main(["train", "train.yaml", "num_train_epochs=6", "overwrite_output_dir=false",
                 f"resume_from_checkpoint={workspace / 'out' / 'checkpoint-3'}"]) == 0
    assert autocast_per_step == [False, False, False]
    assert "the checkpoint's run went on in float32 after step 2; so does this one" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    ({}, "acts on the recall checks of `recall_target`; set that too"),
    ({"recall_target": 0.9, "float32_from_recall": 0.9}, "a fraction above 0 and below `recall_target` \\(0.9\\)"),
    ({"recall_target": 0.9, "auto_bf16": False}, "this run computes in float32 throughout"),
    ({"recall_target": 0.9, "auto_bf16": False, "bf16": True, "pure_bf16": True}, "the weights themselves are bf16"),
    ({"recall_target": 0.9, "quantization_bit": 4, "finetuning_type": "lora"}, "quantized model \\(QLoRA\\)"),
])
def test_float32_from_recall_is_refused_where_it_could_not_act(tmp_path, extra, message):
    from tuneforge.config.parser import load_config_dict
    from tuneforge.errors import ConfigError, NotSupportedError

    config = {"model_name_or_path": "m", "dataset": "d", "output_dir": str(tmp_path), "stage": "sft", "do_train": True,
              "auto_bf16": True, "float32_from_recall": 0.8, **extra}
    with pytest.raises((ConfigError, NotSupportedError), match=message):
        load_config_dict(config)
    assert load_config_dict({**config, **{"recall_target": 0.95, "float32_from_recall": 0.8, "auto_bf16": True,
                                          "bf16": False, "pure_bf16": False, "quantization_bit": None}})


def test_the_check_of_a_bf16_freeze_run_computes_as_its_training_does(workspace, capsys, monkeypatch):
    """A freeze run in bf16 keeps its frozen layers (and head) in bf16 and the trained ones in float32: its check
    runs under the run's autocast, as its training steps do (without it the head met float32 inputs and failed)."""
    import yaml

    from tuneforge.train import recall_stop

    real_check, autocast_in_check = recall_stop.teacher_forced_exact, []

    def recording_check(*args, **kwargs):
        autocast_in_check.append(torch.is_autocast_enabled("cpu"))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(recall_stop, "teacher_forced_exact", recording_check)
    config = yaml.safe_load((workspace / "train.yaml").read_text())
    config.update(finetuning_type="freeze", freeze_trainable_layers=1, bf16=True, augment_facts=False)
    (workspace / "train.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["train", "train.yaml"]) == 0
    assert autocast_in_check == [True, True]
    assert "recall check (epoch 2.00): 0/4 training answers reproduced exactly" in capsys.readouterr().out
