"""Console logging for the front ends: `[tuneforge] message` lines on the current stderr."""

from __future__ import annotations

import logging
import sys
import warnings


class _CurrentStderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at emit time (tests and the web UI swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Idempotent. Also quiets third-party progress bars and deprecation chatter users cannot act on."""
    root = logging.getLogger("tuneforge")
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("[tuneforge] %(message)s"))
        root.addHandler(handler)
        root.propagate = False
    from tuneforge.utils.distributed import is_main_process

    # the other processes of a multi-process run say only what goes wrong; rank 0 tells the story
    root.setLevel(level if is_main_process() else max(level, logging.WARNING))
    if "transformers" in sys.modules or "datasets" in sys.modules:
        quiet_libraries()
    # peft calls a transformers method that transformers 5 deprecated; nothing for a user to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def quiet_libraries() -> None:
    """No third-party progress bars or info chatter. Called once the heavy libraries are needed (after a
    config validates), so that reporting a config error never waits for importing them."""
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_warning()
    except ImportError:
        pass
