"""Help says what is true: the stages `tuneforge -h` and `train -h` name are the supported ones."""

from __future__ import annotations

from tuneforge.cli.main import USAGE
from tuneforge.config import support
from tuneforge.config.help import format_key_help


def test_usage_names_every_supported_stage():
    train_line = next(line for line in USAGE.splitlines() if line.strip().startswith("train "))
    assert all(stage in train_line.split() for stage in support.supported_stages()), train_line


def test_stage_help_names_every_supported_stage():
    stage_line = next(line for line in format_key_help().splitlines() if line.strip().startswith("stage "))
    assert all(f"{stage}," in stage_line or f"{stage}." in stage_line for stage in support.supported_stages()), stage_line
