"""The console progress bar: HF's tqdm bar, with loss and real tokens/s in its postfix.

HF's own ProgressCallback prints every log dict as a raw Python dict under the bar; LogCallback
already prints one readable line per logging step, so this bar only updates its postfix.
"""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback


class TokenProgressCallback(ProgressCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        postfix = {}
        if "loss" in logs:
            postfix["loss"] = f"{float(logs['loss']):.4f}"
        if logs.get("throughput"):
            postfix["tok/s"] = f"{float(logs['throughput']):.0f}"
        if postfix:
            self.training_bar.set_postfix(postfix, refresh=True)


def use_token_progress_bar(trainer) -> None:
    """Swap HF's progress callback for ours (no-op when tqdm is disabled)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(TokenProgressCallback)
