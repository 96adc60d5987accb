"""Gradient checkpointing: explicit keys win; otherwise on only when the estimate does not fit."""

from __future__ import annotations

import pytest

from tuneforge.config.parser import load_config_dict
from tuneforge.estimate import GIB, estimate_memory, spec_from_config
from tuneforge.train.checkpointing import decide_gradient_checkpointing, training_args_with_checkpointing


@pytest.fixture
def cfg_for(tiny_llama_dir, tmp_path):
    def make(**keys):
        base = dict(model_name_or_path=str(tiny_llama_dir), stage="sft", do_train=True, finetuning_type="lora",
                    dataset="identity", template="chatml", output_dir=str(tmp_path / "out"), cutoff_len=64,
                    per_device_train_batch_size=2)
        return load_config_dict({**base, **keys})
    return make


def test_on_only_when_the_estimate_exceeds_free_memory(cfg_for):
    cfg = cfg_for()
    needed = estimate_memory(spec_from_config(cfg, device="cpu")).total
    roomy = decide_gradient_checkpointing(cfg, free_bytes=int(needed * 2), device="cpu")
    tight = decide_gradient_checkpointing(cfg, free_bytes=int(needed), device="cpu")  # 90% of it is usable
    assert not roomy.enabled and tight.enabled
    assert tight.reason == (f"estimated peak without it {needed / GIB:.2f} GiB is above 90% of the "
                            f"{needed / GIB:.1f} GiB free (cpu)")


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated")
def test_explicit_keys_win(cfg_for):
    assert not decide_gradient_checkpointing(cfg_for(disable_gradient_checkpointing=True), free_bytes=1).enabled
    forced = decide_gradient_checkpointing(cfg_for(gradient_checkpointing=True), free_bytes=10**15)
    assert forced.enabled and forced.reason == "gradient_checkpointing: true"
    assert decide_gradient_checkpointing(cfg_for(activation_checkpointing=True), free_bytes=10**15).enabled


def test_the_decision_goes_into_a_copy_of_the_training_arguments(cfg_for, monkeypatch):
    import tuneforge.train.checkpointing as module

    monkeypatch.setattr(module, "free_device_memory", lambda device: 1)  # nothing fits
    cfg = cfg_for()
    args = training_args_with_checkpointing(cfg)
    assert args.activation_checkpointing and args.gradient_checkpointing
    assert args.activation_checkpointing_kwargs == {"use_reentrant": True}  # LF's use_reentrant_gc default
    assert not cfg.training.activation_checkpointing  # the validated config is left as it was
    assert training_args_with_checkpointing(cfg_for(use_reentrant_gc=False)).activation_checkpointing_kwargs == {
        "use_reentrant": False}
