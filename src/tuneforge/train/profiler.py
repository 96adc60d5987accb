"""`enable_torch_profiler` (LF 0.9.5's TorchProfilerCallback): torch.profiler over a schedule of training steps,
one Chrome / TensorBoard trace per cycle and process in `<profiler_output_dir>/rank_<N>/`."""

from __future__ import annotations

import logging
import os

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class TorchProfilerCallback(TrainerCallback):
    def __init__(self, profiler_args) -> None:
        self.settings = profiler_args
        self.profiler = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._stop()
        s = self.settings
        output_dir = s.profiler_output_dir or os.path.join(args.output_dir, "profiler")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=s.profiler_wait_steps, warmup=s.profiler_warmup_steps,
                                             active=s.profiler_active_steps, repeat=s.profiler_repeat),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(os.path.join(output_dir, f"rank_{rank}")),
            record_shapes=s.profiler_record_shapes, profile_memory=s.profiler_profile_memory,
            with_stack=s.profiler_with_stack,
        )
        self.profiler.start()
        logger.info("torch profiler: wait %d, warm-up %d, record %d steps, %s; traces in %s", s.profiler_wait_steps,
                    s.profiler_warmup_steps, s.profiler_active_steps,
                    "for the whole run" if s.profiler_repeat == 0 else f"{s.profiler_repeat} cycle(s)", output_dir)

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.step()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop()

    def _stop(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
