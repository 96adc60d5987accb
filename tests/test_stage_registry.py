"""The stage registry (config/stages.py) is the one list of stages: every record resolves to a recipe,
every data kind has an encoder and columns, and the other layers read their stage lists from it."""

from __future__ import annotations

import importlib

from tuneforge.config import stages, support
from tuneforge.data.stage_encode import KIND_COLUMNS, ROW_ENCODERS


def test_every_stage_has_a_recipe_and_a_known_data_kind():
    for stage in stages.STAGES.values():
        module, function = stage.recipe.split(":")
        assert callable(getattr(importlib.import_module(f"tuneforge.train.{module}"), function)), stage.name
        assert stage.data in stages.DATA_KINDS, stage.name


def test_every_data_kind_has_an_encoder_and_columns():
    assert set(ROW_ENCODERS) == set(KIND_COLUMNS) == set(stages.DATA_KINDS)


def test_support_and_the_web_ui_take_their_stage_lists_from_the_registry():
    assert tuple(support.STAGES) == tuple(stages.STAGES)
    from tuneforge.webui import args

    assert args.STAGES == tuple(name for name, s in stages.STAGES.items() if s.unsupported is None)


def test_run_train_dispatches_through_the_registry(monkeypatch):
    """A new stage is one record: run_train finds its recipe without any other list to edit."""
    import dataclasses

    from tuneforge.train import tuner, workflow

    called = {}
    new = stages.Stage("sft2", "supervised", "sft:run_sft", "SFT again")
    monkeypatch.setattr(stages, "STAGES", {**stages.STAGES, "sft2": new})
    monkeypatch.setattr(importlib.import_module("tuneforge.train.sft"), "run_sft", lambda cfg: called.setdefault("cfg", cfg))
    monkeypatch.setattr(workflow, "require_do_train", lambda cfg: None)
    from conftest import data_run_config
    from tuneforge.config.args import FinetuningArguments

    cfg = dataclasses.replace(data_run_config("tiny"), finetuning=FinetuningArguments(stage="sft2"))
    tuner.run_train(cfg)
    assert called["cfg"].finetuning.stage == "sft2"
