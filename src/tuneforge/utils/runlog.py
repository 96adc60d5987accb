"""The run-log protocol that every loop (the HF Trainer's, PPO's, prediction's) and every front end (the
web UI's job manager) shares, with no dependency on any of them.

`trainer_log.jsonl` has LLaMA-Factory's schema: one JSON object per logging step with
`current_steps, total_steps, loss, lr, epoch, percentage, elapsed_time, remaining_time`
(+ `eval_loss`, `throughput`, `total_tokens` when known); times are "H:MM:SS" strings like LF's
(`str(datetime.timedelta(seconds=int(s)))`). `running_status.json` tells a front end whether the run is
`running | finished | failed | aborted`. A front end in another process asks a run to stop by creating
`STOP_REQUESTED` in the output folder. `plot_loss` draws `training_<key>.png` as LF does.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

TRAINER_LOG = "trainer_log.jsonl"
RUNNING_STATUS = "running_status.json"
STOP_FILE = "STOP_REQUESTED"
TRAINER_STATE = "trainer_state.json"


def format_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


class RunLog:
    """The log files of one run in `output_dir`; `writer=False` (a non-main rank) writes nothing."""

    def __init__(self, output_dir: str | os.PathLike, *, writer: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.writer = writer
        self.start_time = time.time()
        self.start_step = 0
        self.max_steps = 0
        self.current_step = 0

    def begin(self, step: int, max_steps: int) -> None:
        """A run starts at `step` (0, or a resumed checkpoint's): a fresh log, or the log cut back to `step`."""
        self.start_time, self.start_step, self.current_step, self.max_steps = time.time(), step, step, max_steps
        if not self.writer:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if step == 0:
            (self.output_dir / TRAINER_LOG).unlink(missing_ok=True)
        else:  # a killed run logged past its last checkpoint
            truncate_log(self.output_dir / TRAINER_LOG, step)
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)  # a stale request must not stop this run
        self.status("running")

    def stop_requested(self) -> bool:
        return (self.output_dir / STOP_FILE).exists()

    def timing(self, step: int) -> tuple[str, str]:
        elapsed = time.time() - self.start_time
        done = step - self.start_step  # steps of this session (a resumed run starts mid-way)
        remaining = (self.max_steps - step) * elapsed / done if done > 0 else 0.0
        return format_duration(elapsed), format_duration(remaining)

    def record(self, step: int, values: dict[str, Any]) -> dict[str, Any]:
        """Append one LF-schema record for `step` (+ `values`, None dropped); returns it."""
        self.current_step = step
        elapsed, remaining = self.timing(step)
        record = {
            "current_steps": step, "total_steps": self.max_steps, **values,
            "percentage": round(step / self.max_steps * 100, 2) if self.max_steps else 100,
            "elapsed_time": elapsed, "remaining_time": remaining,
        }
        record = {key: value for key, value in record.items() if value is not None}
        self.append(record)
        self.status("running")
        return record

    def append(self, record: dict[str, Any]) -> None:
        """Append a record as it is (e.g. a recall check between Trainer logs)."""
        if self.writer:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / TRAINER_LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def status(self, status: str, **extra: Any) -> None:
        if not self.writer:
            return
        payload = {"status": status, "pid": os.getpid(), "current_steps": self.current_step,
                   "total_steps": self.max_steps,
                   "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / RUNNING_STATUS, payload)

    def end(self, aborted: bool) -> None:
        if self.writer:
            (self.output_dir / STOP_FILE).unlink(missing_ok=True)
        self.status("aborted" if aborted else "finished")


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
