"""`tuneforge data preview / check` read the training keys as plain values (config/training_values.py): the same
values a run gets, without importing transformers' training arguments (and peft, accelerate) first."""

from __future__ import annotations

import json
import subprocess
import sys


def _config(tmp_path, **extra):
    settings = {"model_name_or_path": "m", "dataset": "identity", "output_dir": "out", "seed": 7,
                "per_device_train_batch_size": 3, "learning_rate": 2e-4, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(settings))
    return path


def test_the_same_values_as_a_run(tmp_path):
    from tuneforge.config.parser import load_config
    from tuneforge.config.training_values import TrainingValues

    path = _config(tmp_path)
    light, full = load_config(path, data_only=True), load_config(path)
    assert isinstance(light.training, TrainingValues) and not isinstance(full.training, TrainingValues)
    for key in ("seed", "output_dir", "per_device_train_batch_size", "learning_rate", "num_train_epochs",
                "overwrite_output_dir", "do_train", "max_steps", "use_cpu"):  # as written (HF normalises e.g. report_to)
        assert getattr(light.training, key) == getattr(full.training, key), key
    assert light.training.should_save and light.data == full.data and light.model == full.model
    with light.training.main_process_first(local=True, desc="encoding"):
        pass


def test_no_training_arguments_import(tmp_path):
    code = ("import sys; from tuneforge.config.parser import load_config; "
            f"cfg = load_config({str(_config(tmp_path))!r}, data_only=True); "
            "print(cfg.training.seed, 'peft' in sys.modules, 'transformers.training_args' in sys.modules, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["7", "False", "False", "False"]  # use_cpu asks torch for CUDA only when it is read


def test_several_processes_get_the_real_class(tmp_path, monkeypatch):
    """Under torchrun the first process encodes while the others wait: that needs the real arguments."""
    from tuneforge.config.parser import load_config
    from tuneforge.config.training_values import TrainingValues

    from tuneforge.config import parser

    monkeypatch.setattr(parser, "world_size", lambda: 2)  # WORLD_SIZE=2, as torchrun sets it
    assert not isinstance(load_config(_config(tmp_path), data_only=True).training, TrainingValues)
