"""The HF Trainer's side of the run log (utils/runlog.py): `LogCallback` writes `trainer_log.jsonl` and
`running_status.json` from the Trainer's events, prints one console line per log, and stops the run on
`STOP_REQUESTED` or `request_abort()`; `RunFileCallback` writes the run's fingerprint into checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneforge.utils.distributed import any_rank
from tuneforge.utils.runlog import RunLog


class LogCallback(TrainerCallback):
    """Writes `<output_dir>/trainer_log.jsonl` and `running_status.json`; prints one line per log.

    A front end in this process stops the run with `request_abort()`, one in another process by creating
    `<output_dir>/STOP_REQUESTED` (checked after every step). A recipe that catches an exception calls
    `mark_failed(message)` so the status file does not stay at `running`.

    `extra_keys`: a stage's own metrics to keep in the record and the console line, as names or name
    prefixes (`"rewards/"` keeps rewards/chosen, rewards/margins, ...; eval_ versions are kept too).
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, *, console: bool = True,
                 extra_keys: tuple[str, ...] = ()) -> None:
        self.run_log = RunLog(output_dir) if output_dir is not None else None
        self.console = console
        self.extra_keys = tuple(extra_keys)
        self.aborted = False
        self._save_on_stop = False

    def _log(self, args) -> RunLog:
        if self.run_log is None:
            self.run_log = RunLog(args.output_dir)
        return self.run_log

    def request_abort(self, *, save_checkpoint: bool = False) -> None:
        """Stop after the current step; with `save_checkpoint`, keep that step as a checkpoint (Ctrl-C)."""
        self.aborted = True
        self._save_on_stop = self._save_on_stop or save_checkpoint

    def write_record(self, record: dict[str, Any]) -> None:
        """Append a record that is not a Trainer log (e.g. a recall check) to trainer_log.jsonl."""
        if self.run_log is not None:
            self.run_log.append({**record, "total_steps": self.run_log.max_steps})

    def mark_failed(self, message: str) -> None:
        if self.run_log is not None:
            self.run_log.status("failed", error=message)

    # ---- trainer events -----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        log = self._log(args)
        log.writer = bool(args.should_save)
        log.begin(state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        log = self._log(args)
        log.current_step = state.global_step
        # every rank of a multi-process run stops at the same step (or none waits forever in a collective)
        stop = any_rank(self.aborted or log.stop_requested())
        if stop and not self.aborted:
            self.request_abort(save_checkpoint=True)
        if self.aborted and self._save_on_stop:
            control.should_save = True  # keep this step as a checkpoint the next run resumes from
            self._save_on_stop = False
        if self.aborted:
            control.should_epoch_stop = True
            control.should_training_stop = True

    on_substep_end = on_step_end

    def on_train_end(self, args, state, control, **kwargs):
        log = self._log(args)
        log.current_step = state.global_step
        log.end(self.aborted)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        log = self._log(args)
        if log.max_steps == 0:  # evaluate() without train()
            log.max_steps = state.max_steps
        values = {"loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"), "predict_loss": logs.get("predict_loss"),
                  "lr": logs.get("learning_rate"), "epoch": logs.get("epoch"), "throughput": logs.get("throughput"),
                  "total_tokens": logs.get("total_tokens"),
                  **{key: value for key, value in logs.items() if self._is_extra(key)}}
        record = log.record(state.global_step, values)
        if self.console and log.writer and ("loss" in record or "eval_loss" in record):
            extras = [f"{key} {value:.4g}" for key, value in record.items()
                      if self._is_extra(key) and isinstance(value, (int, float))]
            print(" | ".join([format_console_line(record), *extras]), flush=True)

    def _is_extra(self, key: str) -> bool:
        name = key.removeprefix("eval_")
        return any(name == extra or (extra.endswith("/") and name.startswith(extra)) for extra in self.extra_keys)


class RunFileCallback(TrainerCallback):
    """Writes the run's fingerprint (`train/resume.py`) into every checkpoint it saves."""

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        from tuneforge.train.resume import write_run_file

        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            write_run_file(checkpoint, self.fingerprint)


def format_console_line(record: dict[str, Any]) -> str:
    """`step 10/100 | loss 1.234 | lr 1.0e-4 | 812 tok/s | ETA 0:01:23`."""
    parts = [f"step {record['current_steps']}/{record['total_steps']}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.3f}")
    if "eval_loss" in record:
        parts.append(f"eval_loss {record['eval_loss']:.3f}")
    if "lr" in record:
        mantissa, exponent = f"{record['lr']:.1e}".split("e")
        parts.append(f"lr {mantissa}e{int(exponent)}")
    if "throughput" in record:
        parts.append(f"{record['throughput']:.0f} tok/s")
    if "loss" in record:
        parts.append(f"ETA {record['remaining_time']}")
    return " | ".join(parts)
