"""Web UI pieces without a browser: UI values -> config/YAML, dataset and checkpoint discovery, the
stop file of LogCallback, and the JobManager (start, progress, abort, re-attach) on a tiny model."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import IDENTITY_ROWS

pytest.importorskip("gradio")

from tuneforge.config.parser import load_config  # noqa: E402
from tuneforge.errors import ConfigError, NotSupportedError  # noqa: E402
from tuneforge.webui import args  # noqa: E402

ROWS = IDENTITY_ROWS


@pytest.fixture
def webui_workspace(tmp_path, monkeypatch, tiny_llama_dir):
    """A working directory with the web UI tests' datasets under data/ and its own tuneforge cache."""
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data")
    return tmp_path


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    pairs = [{"instruction": "Hi", "input": "", "chosen": "Hello!", "rejected": "Go away."}] * 4
    (folder / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    kto = [{"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "label": True}] * 2
    (folder / "kto.json").write_text(json.dumps(kto), encoding="utf-8")
    info = {
        "tiny": {"file_name": "tiny.json"},
        "pairs": {"file_name": "pairs.json", "ranking": True,
                  "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "kto": {"file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"}},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


UI_VALUES = {
    "model_path": "builtin:smollm2", "finetuning_type": "lora", "stage": "sft", "dataset_dir": "data",
    "dataset": ["tiny"], "learning_rate": "1e-4", "num_train_epochs": 2.0, "max_steps": 0, "cutoff_len": 256,
    "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 10,
    "output_dir": "run1", "extra_args": '{"seed": 7}',
}
EXPECTED = {
    "model_name_or_path": "builtin:smollm2", "stage": "sft", "do_train": True, "finetuning_type": "lora",
    "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target": "all",
    "dataset": "tiny", "dataset_dir": "data", "cutoff_len": 256, "max_samples": 100000,
    "output_dir": "saves/smollm2/lora/run1", "logging_steps": 1, "save_steps": 10, "plot_loss": True,
    "report_to": "none", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
    "learning_rate": 1e-4, "num_train_epochs": 2.0, "lr_scheduler_type": "cosine", "max_grad_norm": 1.0,
    "seed": 7,
}


def test_build_train_config_is_what_the_cli_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data")
    config = args.build_train_config(UI_VALUES, "saves")
    assert config == EXPECTED
    assert list(config)[:4] == ["model_name_or_path", "stage", "do_train", "finetuning_type"]
    args.validate(config)

    yaml_path = tmp_path / "job.yaml"
    yaml_path.write_text(args.to_yaml(config, yaml_path), encoding="utf-8")
    assert yaml_path.read_text().splitlines()[0] == f"# tuneforge train {yaml_path}"
    cfg = load_config(str(yaml_path))
    assert dict(cfg.raw) == EXPECTED
    assert cfg.finetuning.lora_rank == 8 and cfg.data.dataset == ("tiny",)
    assert cfg.training.learning_rate == 1e-4 and cfg.training.seed == 7
    assert cfg.training.output_dir == "saves/smollm2/lora/run1"
    assert args.train_command(yaml_path) == f"tuneforge train {yaml_path}"


def test_build_predict_config_is_lfs_predict_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data")
    model = {"model_path": "builtin:smollm2", "finetuning_type": "lora", "checkpoints": ["run1"]}
    config = args.build_predict_config(model, {"eval_dataset": ["tiny"], "eval_max_samples": 20,
                                               "eval_output_dir": "eval1"}, "saves")
    assert config == {
        "model_name_or_path": "builtin:smollm2", "adapter_name_or_path": "saves/smollm2/lora/run1", "stage": "sft",
        "do_predict": True, "finetuning_type": "lora", "eval_dataset": "tiny", "dataset_dir": "data",
        "cutoff_len": 1024, "max_samples": 20, "predict_with_generate": True, "max_new_tokens": 512, "top_p": 0.7,
        "temperature": 0.95, "output_dir": "saves/smollm2/lora/eval1", "report_to": "none",
    }
    cfg = args.validate(config)
    assert cfg.training.do_predict and not cfg.training.do_train and cfg.data.eval_dataset == ("tiny",)
    with pytest.raises(ConfigError, match="no dataset chosen; pick at least one dataset to predict on"):
        args.build_predict_config(model, {"eval_output_dir": "eval1"}, "saves")


def test_model_bar_values_map_to_keys(tmp_path):
    values = {**UI_VALUES, "checkpoints": ["run0", "run0/checkpoint-5"], "template": "chatml",
              "quantization_bit": "4", "rope_scaling": "linear", "booster": "flashattn2", "compute_type": "bf16",
              "max_steps": 3, "warmup_steps": 2, "val_size": 0.25, "use_dora": True}
    config = args.build_train_config(values, tmp_path / "saves")
    root = tmp_path / "saves" / "smollm2" / "lora"
    assert config["adapter_name_or_path"] == f"{root / 'run0'},{root / 'run0/checkpoint-5'}"
    assert (config["template"], config["quantization_bit"], config["quantization_method"]) == ("chatml", 4, "bnb")
    assert (config["rope_scaling"], config["flash_attn"], config["bf16"]) == ("linear", "fa2", True)
    assert (config["max_steps"], config["warmup_steps"], config["val_size"], config["use_dora"]) == (3, 2, 0.25, True)
    freeze = args.build_train_config({**UI_VALUES, "finetuning_type": "freeze", "freeze_trainable_layers": 1}, "s")
    assert not any(k.startswith("lora") for k in freeze)
    assert (freeze["freeze_trainable_layers"], freeze["freeze_trainable_modules"]) == (1, "all")
    dpo = args.build_train_config({**UI_VALUES, "stage": "dpo", "pref_beta": 0.2}, "s")
    assert (dpo["pref_beta"], dpo["pref_ftx"], dpo["pref_loss"]) == (0.2, 0.0, "sigmoid")
    assert "num_generations" not in dpo  # GRPO's keys only with stage grpo (refused elsewhere)
    grpo = args.build_train_config({**UI_VALUES, "stage": "grpo", "num_generations": 4.0, "reward_funcs": "accuracy,format"}, "s")
    assert (grpo["num_generations"], grpo["reward_funcs"], grpo["beta"], grpo["loss_type"]) == (4, "accuracy,format", 0.0, "dapo")
    assert "grpo" in args.STAGES and "dr_grpo" in args.GRPO_LOSSES
    args.validate(grpo)  # what the Train tab starts is a config the CLI accepts


def test_values_round_trip(tmp_path):
    values = {**args.DEFAULTS, **UI_VALUES, "compute_type": "bf16", "template": "chatml"}
    config = args.build_train_config(values, "saves")
    back = args.values_from_config(config, "saves")
    for key in ("model_path", "finetuning_type", "stage", "dataset", "cutoff_len", "compute_type", "template",
                "output_dir", "lora_rank"):
        assert back[key] == values[key], key
    assert back["learning_rate"] == "0.0001"
    assert json.loads(back["extra_args"]) == {"seed": 7}
    assert args.build_train_config({**values, **back}, "saves") == config


@pytest.mark.parametrize(
    "change, error, text",
    [
        ({"dataset": []}, ConfigError, "web UI: no dataset chosen; pick at least one dataset for stage `sft`"),
        ({"extra_args": "{seed: 1}"}, ConfigError,
         "web UI: extra arguments are not valid JSON (line 1, column 2: Expecting property name enclosed in "
         "double quotes); expected an object such as {\"seed\": 1}"),
        ({"extra_args": "[1]"}, ConfigError, "web UI: extra arguments must be a JSON object such as {\"seed\": 1}, got a list"),
        ({"learning_rate": "fast"}, ConfigError, "web UI: `learning_rate` expects a number, got 'fast'"),
        ({"output_dir": " "}, ConfigError, "web UI: the output folder is empty; give the run a name"),
        ({"model_path": ""}, ConfigError, "web UI: no model chosen; pick one or enter a local folder / hub id"),
    ],
)
def test_ui_mistakes_are_messages(change, error, text):
    with pytest.raises(error) as info:
        args.build_train_config({**UI_VALUES, **change}, "saves")
    assert str(info.value) == text


def test_config_loader_errors_reach_the_ui():
    with pytest.raises(NotSupportedError, match=r"^web UI: `use_mca` is not supported yet by tuneforge \(Megatron "):
        args.validate(args.build_train_config({**UI_VALUES, "extra_args": '{"use_mca": true}'}, "saves"))
    with pytest.raises(ConfigError, match="unknown key `learning_rat`; did you mean `learning_rate`"):
        args.validate(args.build_train_config({**UI_VALUES, "extra_args": '{"learning_rat": 1}'}, "saves"))


def test_datasets_filtered_by_stage(tmp_path):
    data = write_data(tmp_path / "data")
    assert args.list_datasets(str(data), "sft") == ["tiny", "kto"]  # LF's rule: only ranking data is kept apart
    assert args.list_datasets(str(data), "pt") == ["tiny", "kto"]
    assert args.list_datasets(str(data), "dpo") == ["pairs"]
    assert args.list_datasets(str(data), "kto") == ["kto"]
    assert args.list_datasets(str(tmp_path / "nowhere"), "sft") == []
    shipped = args.list_datasets(str(Path(__file__).parents[1] / "data"), "sft")
    assert "identity_tuneforge" in shipped and "demo_dpo_en_zh" not in shipped


def test_checkpoints_runs_and_resume_note(tmp_path):
    root = tmp_path / "saves" / "tiny_model" / "lora"
    (root / "done").mkdir(parents=True)
    (root / "done" / "adapter_model.safetensors").write_bytes(b"x")
    for step in (2, 10):
        ckpt = root / "half" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"x")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 20}))
    (root / "empty").mkdir()
    model = str(tmp_path / "models" / "tiny_model")
    assert args.model_slug(model) == "tiny_model"
    assert args.model_slug("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen2.5-0.5B-Instruct"
    assert args.list_checkpoints(tmp_path / "saves", model, "lora") == ["done", "half/checkpoint-2", "half/checkpoint-10"]
    assert args.list_runs(tmp_path / "saves", model, "lora") == ["done", "empty", "half"]
    assert args.list_checkpoints(tmp_path / "saves", model, "full") == []
    assert args.describe_output_dir(root / "half") == (
        "resume", f"{root / 'half'} exists: training resumes from checkpoint-10 (step 10 of 20)")
    kind, note = args.describe_output_dir(root / "done")
    assert kind == "conflict" and note.startswith(f"{root / 'done'} already holds a trained model")
    assert args.describe_output_dir(root / "new") == ("new", f"new run: {root / 'new'}")
    assert args.describe_output_dir(root / "new", "zh") == ("new", f"新的训练：{root / 'new'}")
    assert args.describe_output_dir(root / "half", "zh") == (
        "resume", f"{root / 'half'} 已存在：从 checkpoint-10 继续训练（第 10 / 20 步）")
    assert args.describe_output_dir(root / "empty", "zh") == ("new", f"在已有文件夹 {root / 'empty'} 中开始新的训练")


def test_stop_file_stops_training_and_keeps_a_checkpoint(tmp_path):
    from transformers import TrainerControl

    from tuneforge.train.callbacks import LogCallback
    from tuneforge.utils.runlog import RUNNING_STATUS, STOP_FILE

    (tmp_path / STOP_FILE).touch()  # stale: left by an earlier run
    callback = LogCallback(tmp_path, console=False)
    targs = SimpleNamespace(should_save=True, output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=0, max_steps=10)
    control = TrainerControl()
    callback.on_train_begin(targs, state, control)
    assert not (tmp_path / STOP_FILE).exists()
    state.global_step = 1
    callback.on_step_end(targs, state, control)
    assert not control.should_training_stop and not control.should_save
    (tmp_path / STOP_FILE).touch()
    state.global_step = 2
    callback.on_step_end(targs, state, control)
    assert control.should_training_stop and control.should_epoch_stop and control.should_save
    callback.on_train_end(targs, state, control)
    status = json.loads((tmp_path / RUNNING_STATUS).read_text())
    assert (status["status"], status["current_steps"]) == ("aborted", 2)
    assert not (tmp_path / STOP_FILE).exists()


def test_port_taken_is_a_clear_error():
    from tuneforge.cli.main import main
    from tuneforge.webui.app import check_port_free

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^cannot serve the web UI on 127\.0\.0\.1:{port}: the port is "
                                              r"already in use or not available \(.+\); choose another one with --port N$"):
            check_port_free("127.0.0.1", port)
    assert main(["webui", "--port", "http"]) == 2


def test_every_string_has_both_languages():
    from tuneforge.webui.i18n import LABELS, MESSAGES, message, text

    for table in (LABELS, MESSAGES):
        for key, (en, zh) in table.items():
            assert en.strip() and zh.strip(), key
    assert text("start", "zh") == "开始" and text("start", "en") == "Start"
    assert message("finished", "en", output_dir="x") == "Finished. Saved in x"
