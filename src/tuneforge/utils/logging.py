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
    _quiet_bitsandbytes()


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes` (after the first, when `once`)."""

    def __init__(self, *prefixes: str, once: bool = False):
        super().__init__()
        self.prefixes, self.once, self.seen = prefixes, once, set()

    def filter(self, record: logging.LogRecord) -> bool:
        prefix = next((p for p in self.prefixes if str(record.msg).startswith(p)), None)
        if prefix is None:
            return True
        first = self.once and prefix not in self.seen
        self.seen.add(prefix)
        return first


def _quiet_bitsandbytes() -> None:
    """peft imports bitsandbytes whenever it is installed. Its CPU backend then logs that an optional kernel
    package (fetched from the Hugging Face Hub at run time) is missing, on every run; and 8-bit QLoRA logs
    the same float16 cast on every matrix product."""
    for name, drop in (("bitsandbytes.backends.cpu.ops", _DropMessages("Failed to load CPU gemm_4bit_forward")),
                       ("bitsandbytes.autograd._functions", _DropMessages("MatMul8bitLt: inputs will be cast",
                                                                          once=True))):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in target.filters):
            target.addFilter(drop)


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
