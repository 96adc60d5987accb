"""JobManager: runs `tuneforge train <yaml>` as a subprocess and follows it through the run's own files.

The job writes `trainer_log.jsonl` (one record per logging step) and `running_status.json`
(`running | finished | failed | aborted`, with the writer's pid) into its output_dir; stdout/stderr go
to `<output_dir>/webui_train.log`. `snapshot()` turns those into one `JobSnapshot` for the UI, so a
page refresh simply asks again. The current job is also recorded in `<state_dir>/current_job.json`,
so a restarted UI re-attaches to a job that is still running.

Abort creates `<output_dir>/STOP_REQUESTED`; the run's LogCallback sees it after the step in flight,
saves a checkpoint and ends as `aborted`. A job that has not begun training yet (loading the model
or tokenizing) has nothing to keep and is terminated; one that ignores the request is terminated
after `abort_grace_s`.

A recall check of the Evaluate tab (`kind="recall"`, webui/recall_job.py) runs `tuneforge eval recall <yaml>
--output <output_dir>/recall_results.json ...` instead: it writes no status files, so its progress is the
last `[tuneforge] <phase> 3/50 (12s)` line of its output, it finished when it exited leaving
recall_results.json (removed before the start), and Abort terminates it (nothing is kept: the results are
written only at the end).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.utils.runlog import RUNNING_STATUS, STOP_FILE, TRAINER_LOG, format_duration

JOB_YAML = "tuneforge_train.yaml"
JOB_LOG = "webui_train.log"
STATE_FILE = "current_job.json"
FINAL_STATES = ("finished", "failed", "aborted")


class JobBusyError(TuneforgeError):
    """A second job was started while one is running."""


@dataclass
class JobSnapshot:
    status: str = "idle"  # idle | starting | running | aborting | finished | failed | aborted
    output_dir: str = ""
    yaml_path: str = ""
    pid: int | None = None
    current_steps: int = 0
    total_steps: int = 0
    percentage: float = 0.0
    elapsed: str = "0:00:00"
    remaining: str = "0:00:00"
    throughput: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    log_tail: str = ""
    message: str = ""  # the error of a failed job, the resume note of a new one
    kind: str = "train"  # train | predict (a `do_predict` run of the Evaluate tab) | recall (`eval recall`)
    command: str = ""  # the command line as a user would type it
    phase: str = ""  # a recall check's current part: recall | held-out | drift (base model) | drift (fine-tuned)
    results_path: str = ""  # a recall check's recall_results.json

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running", "aborting")


def default_threads() -> int:
    """Threads for the training process: all cores but one for the UI, all of them on <= 2 cores."""
    cores = os.cpu_count() or 1
    return cores - 1 if cores > 2 else cores


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # carriage-return progress bars: keep what the terminal would show last on each line
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(shown[-lines:])


class JobManager:
    """One training subprocess at a time; everything the UI shows comes from `snapshot()`."""

    def __init__(self, state_dir: str | Path, *, workdir: str | Path | None = None, threads: int | None = None,
                 abort_grace_s: float = 120.0) -> None:
        self.state_dir = Path(state_dir)
        self.workdir = Path(workdir) if workdir is not None else Path.cwd()
        self.threads = threads or default_threads()
        self.abort_grace_s = abort_grace_s
        self._proc: subprocess.Popen | None = None
        self._job: dict[str, Any] | None = None
        self._log_cache: tuple[int, list[dict[str, Any]]] = (-1, [])
        self._reattach()

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, config: dict[str, Any], yaml_text: str | None = None, note: str = "", *, kind: str | None = None,
              options: list[str] | tuple[str, ...] = ()) -> JobSnapshot:
        """Write the YAML into output_dir and start `tuneforge train` on it; `kind="recall"`: start
        `tuneforge eval recall` on it with `options` (recall_job.recall_options)."""
        if self.is_running():
            job = self._job or {}
            raise JobBusyError(f"a job is already running (output_dir {job.get('output_dir')}, "
                               f"pid {job.get('pid')}); abort it or wait until it finishes before starting another")
        from tuneforge.webui import recall_job
        from tuneforge.webui.args import to_yaml, train_command

        output_dir = Path(config["output_dir"])
        if not output_dir.is_absolute():
            output_dir = self.workdir / output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        kind = kind or ("predict" if config.get("do_predict") and not config.get("do_train") else "train")
        results_path = ""
        if kind == "recall":
            yaml_path, log_path = output_dir / recall_job.RECALL_YAML, output_dir / recall_job.RECALL_LOG
            argv = recall_job.recall_argv(yaml_path, output_dir, options)
            command, shown = [sys.executable, "-m", "tuneforge", *argv], recall_job.command_text(argv)
            results_path = str(recall_job.results_file(output_dir))
            Path(results_path).unlink(missing_ok=True)  # a finished check is one that wrote it anew
        else:
            yaml_path, log_path = output_dir / JOB_YAML, output_dir / JOB_LOG
            command, shown = self.command(yaml_path), train_command(yaml_path)
        yaml_path.write_text(yaml_text or to_yaml(config, command=shown), encoding="utf-8")
        (output_dir / STOP_FILE).unlink(missing_ok=True)
        # OMP_NUM_THREADS is the job's maximum; it still gives cores back while the UI chats
        # (train/threads.py).
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "TUNEFORGE_ADAPT_THREADS": "1",
               "PYTHONUNBUFFERED": "1",
               "TOKENIZERS_PARALLELISM": "false",
               "TQDM_DISABLE": "1"}  # the CLI prints one line per logging step; bars only clutter the log view
        with open(log_path, "w", encoding="utf-8") as log:
            self._proc = subprocess.Popen(
                command,
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl-C in the UI's terminal must not kill the job
            )
        self._job = {"pid": self._proc.pid, "output_dir": str(output_dir), "yaml_path": str(yaml_path),
                     "log_path": str(log_path), "started_at": time.time(), "abort_requested_at": None,
                     "note": note, "kind": kind, "command": shown, "results_path": results_path}
        self._log_cache = (-1, [])
        self._save_state()
        _limit_ui_threads()
        return self.snapshot()

    def command(self, yaml_path: Path) -> list[str]:
        """The job's command line: the CLI itself, so a user can rerun exactly what the UI ran."""
        return [sys.executable, "-m", "tuneforge", "train", str(yaml_path)]

    def abort(self) -> str:
        """Ask the running job to stop; returns what happened, in one line."""
        if not self.is_running() or self._job is None:
            return "no job is running"
        job = self._job
        if job["abort_requested_at"] is None:
            job["abort_requested_at"] = time.time()
            self._save_state()
        if job.get("kind") == "recall":  # no steps and no checkpoints: the check simply ends
            self._signal(signal.SIGTERM)
            return "abort requested: the recall check was stopped (its results are written only when it completes)"
        Path(job["output_dir"], STOP_FILE).touch()
        if self._own_status() is None:  # still loading: no step, nothing to save
            self._signal(signal.SIGTERM)
            return "abort requested: the job had not started training yet and was stopped"
        return "abort requested: the job stops after the current step and keeps a checkpoint"

    def is_running(self) -> bool:
        if self._job is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_runs(self._job["pid"], self._job["yaml_path"])

    def wait(self, timeout: float, poll_s: float = 0.2) -> JobSnapshot:
        """Block until the job ends (tests, scripts); returns the final snapshot."""
        deadline = time.time() + timeout
        while self.is_running() and time.time() < deadline:
            time.sleep(poll_s)
            self._escalate_abort()
        return self.snapshot()

    # ---- what the UI shows ----------------------------------------------------------------------
    def snapshot(self) -> JobSnapshot:
        job = self._job
        if job is None:
            return JobSnapshot()
        self._escalate_abort()
        out = Path(job["output_dir"])
        snap = JobSnapshot(output_dir=job["output_dir"], yaml_path=job["yaml_path"], pid=job["pid"],
                           message=job.get("note", ""), log_tail=_tail(Path(job["log_path"])),
                           kind=job.get("kind", "train"), command=job.get("command", ""))
        if snap.kind == "recall":
            return self._recall_snapshot(job, snap)
        records = self._records(out / TRAINER_LOG)
        snap.losses = [(int(r["current_steps"]), float(r["loss"])) for r in records if "loss" in r]
        if records:
            last = records[-1]
            snap.current_steps, snap.total_steps = int(last.get("current_steps", 0)), int(last.get("total_steps", 0))
            snap.percentage = float(last.get("percentage", 0.0))
            snap.elapsed, snap.remaining = last.get("elapsed_time", snap.elapsed), last.get("remaining_time", snap.remaining)
            snap.throughput = next((r["throughput"] for r in reversed(records) if "throughput" in r), None)
        status = self._own_status()
        running = self.is_running()
        if running:
            if job["abort_requested_at"] is not None:
                snap.status = "aborting"
            else:
                # No status file yet: still loading. A final status while the process lives: saving at the end.
                snap.status = "running" if status else "starting"
        elif status and status.get("status") in FINAL_STATES:
            snap.status = status["status"]
            if snap.status == "failed":
                snap.message = status.get("error") or _error_line(snap.log_tail)
        else:  # ended without a final status: killed, or failed before training began
            snap.status = "aborted" if job["abort_requested_at"] is not None else "failed"
            if snap.status == "failed":
                snap.message = _error_line(snap.log_tail)
        if status and snap.status != "finished":
            snap.current_steps = max(snap.current_steps, int(status.get("current_steps", 0)))
            snap.total_steps = snap.total_steps or int(status.get("total_steps", 0))
        if snap.status == "finished" and snap.total_steps and snap.current_steps >= snap.total_steps:
            snap.percentage, snap.remaining = 100.0, "0:00:00"
        return snap

    def _recall_snapshot(self, job: dict[str, Any], snap: JobSnapshot) -> JobSnapshot:
        """A recall check: progress from its output lines, the end from its exit and recall_results.json."""
        from tuneforge.webui import recall_job

        log_path = Path(job["log_path"])
        text = _tail(log_path, lines=100_000, max_bytes=65536)  # the progress lines come before the report
        progress = recall_job.parse_progress(text)
        snap.results_path = job.get("results_path", "")
        if progress is not None:
            snap.phase, snap.current_steps, snap.total_steps = progress.phase, progress.done, progress.total
            snap.percentage = 100.0 * progress.done / progress.total if progress.total else 0.0
        if self.is_running():
            snap.elapsed = format_duration(time.time() - job["started_at"])
            if job["abort_requested_at"] is not None:
                snap.status = "aborting"
            else:
                snap.status = "running" if recall_job.has_begun(text) else "starting"
                snap.message = progress.extra if progress is not None else snap.message
            return snap
        try:
            snap.elapsed = format_duration(log_path.stat().st_mtime - job["started_at"])  # last output = the end
        except OSError:
            pass
        exit_code = self._proc.poll() if self._proc is not None else None  # None: re-attached, not our child
        if job["abort_requested_at"] is not None:
            snap.status = "aborted"
        elif exit_code in (None, 0) and snap.results_path and Path(snap.results_path).is_file():
            snap.status, snap.percentage, snap.remaining = "finished", 100.0, "0:00:00"
        else:
            snap.status, snap.message = "failed", _error_line(snap.log_tail)
        return snap

    # ---- internals ------------------------------------------------------------------------------
    def _own_status(self) -> dict[str, Any] | None:
        """running_status.json when this job's process wrote it (an older run's file is ignored)."""
        if self._job is None:
            return None
        status = _read_json(Path(self._job["output_dir"]) / RUNNING_STATUS)
        return status if status is not None and status.get("pid") == self._job["pid"] else None

    def _records(self, path: Path) -> list[dict[str, Any]]:
        if self._own_status() is None:  # the file may still be an earlier run's
            return []
        try:
            size = path.stat().st_size
        except OSError:
            return []
        if size != self._log_cache[0]:
            text = path.read_text(encoding="utf-8", errors="replace")
            records = []
            for line in text.splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass  # a line being written right now
            self._log_cache = (size, records)
        return self._log_cache[1]

    def _escalate_abort(self) -> None:
        job = self._job
        if job is None or job["abort_requested_at"] is None or not self.is_running():
            return
        waited = time.time() - job["abort_requested_at"]
        if waited > self.abort_grace_s + 15:
            self._signal(signal.SIGKILL)
        elif waited > self.abort_grace_s:
            self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._job["pid"], sig)  # the job is its own process group (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STATE_FILE).write_text(json.dumps(self._job, indent=2), encoding="utf-8")

    def _reattach(self) -> None:
        """Pick up the job recorded by an earlier UI process (running or not: its result is still shown)."""
        job = _read_json(self.state_dir / STATE_FILE)
        if job and {"pid", "output_dir", "yaml_path", "log_path"} <= set(job):
            job.setdefault("abort_requested_at", None)
            self._job = job


def _pid_runs(pid: int, yaml_path: str) -> bool:
    """True when `pid` is alive and is still our `tuneforge train|eval recall <yaml_path>` (pids get reused)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and yaml_path in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _error_line(log_tail: str) -> str:
    """The CLI's one-line `error: ...` from the job's output, else its last lines."""
    lines = [line for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return "\n".join(lines[-5:]) or "the job ended without output"


def _limit_ui_threads() -> None:
    """While a job trains, the UI process must not compete for cores (it only serves pages)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
