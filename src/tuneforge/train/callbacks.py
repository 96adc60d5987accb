"""Progress reporting: `trainer_log.jsonl`, `running_status.json`, a console line, loss plots.

`trainer_log.jsonl` has LLaMA-Factory's schema: one JSON object per logging step with
`current_steps, total_steps, loss, lr, epoch, percentage, elapsed_time, remaining_time`
(+ `eval_loss`, `throughput`, `total_tokens` when known); times are "H:MM:SS" strings like LF's
(`str(datetime.timedelta(seconds=int(s)))`). `running_status.json` tells a front end (web UI, job
manager) whether the run is `running | finished | failed | aborted`.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

TRAINER_LOG = "trainer_log.jsonl"
RUNNING_STATUS = "running_status.json"
# A front end in another process (the web UI's job manager) asks a run to stop by creating this file in
# output_dir: the run saves a checkpoint at the current step and ends as `aborted`.
STOP_FILE = "STOP_REQUESTED"
TRAINER_STATE = "trainer_state.json"


def format_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


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
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.console = console
        self.extra_keys = tuple(extra_keys)
        self.start_time = 0.0
        self.start_step = 0
        self.max_steps = 0
        self.current_step = 0
        self.aborted = False
        self._save_on_stop = False
        self.is_writer = True

    # ---- helpers ----------------------------------------------------------------------------
    def _dir(self, args) -> Path:
        return self.output_dir if self.output_dir is not None else Path(args.output_dir)

    def _timing(self, step: int) -> tuple[str, str]:
        elapsed = time.time() - self.start_time
        done = step - self.start_step  # steps of this session (a resumed run starts mid-way)
        remaining = (self.max_steps - step) * elapsed / done if done > 0 else 0.0
        return format_duration(elapsed), format_duration(remaining)

    def _write_status(self, status: str, **extra: Any) -> None:
        if self.output_dir is None or not self.is_writer:
            return
        payload = {
            "status": status,
            "pid": os.getpid(),
            "current_steps": self.current_step,
            "total_steps": self.max_steps,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        _write_json_atomic(self.output_dir / RUNNING_STATUS, payload)

    def request_abort(self, *, save_checkpoint: bool = False) -> None:
        """Stop after the current step; with `save_checkpoint`, keep that step as a checkpoint (Ctrl-C)."""
        self.aborted = True
        self._save_on_stop = self._save_on_stop or save_checkpoint

    def write_record(self, record: dict[str, Any]) -> None:
        """Append a record that is not a Trainer log (e.g. a recall check) to trainer_log.jsonl."""
        if self.is_writer and self.output_dir is not None:
            with open(self.output_dir / TRAINER_LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps({**record, "total_steps": self.max_steps}) + "\n")

    def mark_failed(self, message: str) -> None:
        self._write_status("failed", error=message)

    # ---- trainer events -----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.is_writer = bool(args.should_save)
        self.output_dir = self._dir(args)
        self.start_time = time.time()
        self.start_step = state.global_step
        self.current_step = state.global_step
        self.max_steps = state.max_steps
        if not self.is_writer:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.output_dir / TRAINER_LOG
        if state.global_step == 0:
            log_path.unlink(missing_ok=True)  # a fresh run
        else:  # a resumed run continues its log from the checkpoint's step (a killed run logged further)
            truncate_log(log_path, state.global_step)
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)  # a stale request must not stop this run
        self._write_status("running")

    def on_step_end(self, args, state, control, **kwargs):
        self.current_step = state.global_step
        if not self.aborted and self.output_dir is not None and (self.output_dir / STOP_FILE).exists():
            self.request_abort(save_checkpoint=True)
        if self.aborted and self._save_on_stop:
            control.should_save = True  # keep this step as a checkpoint the next run resumes from
            self._save_on_stop = False
        if self.aborted:
            control.should_epoch_stop = True
            control.should_training_stop = True

    on_substep_end = on_step_end

    def on_train_end(self, args, state, control, **kwargs):
        self.current_step = state.global_step
        if self.output_dir is not None and self.is_writer:
            (self.output_dir / STOP_FILE).unlink(missing_ok=True)
        self._write_status("aborted" if self.aborted else "finished")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if self.max_steps == 0:  # evaluate() without train()
            self.max_steps = state.max_steps
        self.current_step = state.global_step
        elapsed, remaining = self._timing(state.global_step)
        record = {
            "current_steps": state.global_step,
            "total_steps": self.max_steps,
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "predict_loss": logs.get("predict_loss"),
            "lr": logs.get("learning_rate"),
            "epoch": logs.get("epoch"),
            "percentage": round(state.global_step / self.max_steps * 100, 2) if self.max_steps else 100,
            "elapsed_time": elapsed,
            "remaining_time": remaining,
            "throughput": logs.get("throughput"),
            "total_tokens": logs.get("total_tokens"),
            **{key: value for key, value in logs.items() if self._is_extra(key)},
        }
        record = {k: v for k, v in record.items() if v is not None}
        if self.is_writer and self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / TRAINER_LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self._write_status("running")
        if self.console and self.is_writer and ("loss" in record or "eval_loss" in record):
            extras = [f"{key} {value:.4g}" for key, value in record.items()
                      if self._is_extra(key) and isinstance(value, (int, float))]
            print(" | ".join([format_console_line(record), *extras]), flush=True)

    def _is_extra(self, key: str) -> bool:
        name = key.removeprefix("eval_")
        return any(name == extra or (extra.endswith("/") and name.startswith(extra)) for extra in self.extra_keys)


def truncate_log(log_path: Path, last_step: int) -> None:
    """Drop the records after `last_step` (written by a run that was killed after its last checkpoint)."""
    if not log_path.is_file():
        return
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= last_step]
    if len(kept) != len(lines):
        tmp = log_path.with_name(f".{log_path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, log_path)


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("current_steps", 0)
    except (ValueError, AttributeError):
        return math.inf  # an unreadable (half-written) record of the killed run


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


# ---- plots ----------------------------------------------------------------------------------
def smooth(values: list[float]) -> list[float]:
    """Exponential moving average whose weight grows with the series length (as LF's plots)."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        out.append(last)
    return out


def _log_history(output_dir: Path) -> list[dict[str, Any]]:
    state_path = output_dir / TRAINER_STATE
    if state_path.is_file():
        return json.loads(state_path.read_text(encoding="utf-8")).get("log_history", [])
    log_path = output_dir / TRAINER_LOG
    if log_path.is_file():
        rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [{**row, "step": row.get("current_steps")} for row in rows]
    return []


def plot_loss(output_dir: str | os.PathLike, keys: tuple[str, ...] = ("loss", "eval_loss")) -> list[Path]:
    """Write `training_<key>.png` (raw + smoothed curve) for every key that has data; returns the paths.

    Reads `trainer_state.json` (written by `trainer.save_state()`), else `trainer_log.jsonl`.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must happen before pyplot is imported
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    history = _log_history(output_dir)
    written = []
    for key in keys:
        points = [(row["step"], row[key]) for row in history if key in row and row.get("step") is not None]
        if not points:
            continue
        steps, values = zip(*points)
        fig = plt.figure()
        plt.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        plt.plot(steps, smooth(list(values)), color="#1f77b4", label="smoothed")
        plt.title(f"training {key} of {output_dir}")
        plt.xlabel("step")
        plt.ylabel(key)
        plt.legend()
        path = output_dir / f"training_{key.replace('/', '_')}.png"
        plt.savefig(path, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written
