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
    root.setLevel(level)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_warning()
    except ImportError:
        pass
    # peft calls a transformers method that transformers 5 deprecated; nothing for a user to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
