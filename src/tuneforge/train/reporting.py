"""Experiment trackers beside `report_to`: TensorBoard's folder (`logging_dir`) and LF's SwanLab callback.

* `logging_dir`: transformers 5 dropped the training key (its TensorBoard callback reads the
  TENSORBOARD_LOGGING_DIR environment variable instead); LF files still set it, so the TensorBoard callback
  of the run is pointed at it. Unset: output_dir/runs/<time>_<host>, as before. The key wins over the variable.
* `use_swanlab` (LF 0.9.5 `get_swanlab_callback`): swanlab's own transformers callback with `swanlab_project`,
  `swanlab_workspace`, `swanlab_run_name`, `swanlab_mode`, `swanlab_logdir`; `swanlab_api_key` logs in (cloud
  mode only: the other modes never reach the network), `swanlab_lark_webhook_url` / `swanlab_lark_secret`
  register the Lark notification; the run's settings go to the SwanLab config and its public settings to
  output_dir/swanlab_public_config.json. It replaces `report_to: swanlab`, as in LF. Modes: cloud (needs
  network and a login), local (needs `swanlab[dashboard]`), offline (files only; `swanlab sync` uploads them).

* `enable_torch_profiler` (LF 0.9.5): torch.profiler traces of scheduled steps (train/profiler.py).

The packages are optional extras: `pip install 'tuneforge[tensorboard]'`, `pip install 'tuneforge[swanlab]'`;
config/validate.py refuses a training config that needs one that is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SWANLAB_CONFIG = "swanlab_public_config.json"  # LF extras/constants.py


def setup_reporting(handler, cfg) -> None:
    """Point the TensorBoard callback of `handler` (a Trainer's or PPO's CallbackHandler) at `logging_dir`,
    add the SwanLab callback when `use_swanlab` and the torch profiler's when `enable_torch_profiler`."""
    from transformers.integrations import TensorBoardCallback

    logging_dir = cfg.training.logging_dir
    for callback in handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and logging_dir:
            callback.logging_dir = os.path.expanduser(str(logging_dir))
            logger.info("TensorBoard: logging to %s", callback.logging_dir)
    if cfg.finetuning.use_swanlab:
        from transformers.integrations import SwanLabCallback as TransformersSwanLab

        for callback in [c for c in handler.callbacks if isinstance(c, TransformersSwanLab)]:
            handler.remove_callback(callback)  # LF: use_swanlab's callback replaces report_to: swanlab
        handler.add_callback(swanlab_callback(cfg))
    if cfg.profiler.enable_torch_profiler:
        from tuneforge.train.profiler import TorchProfilerCallback

        handler.add_callback(TorchProfilerCallback(cfg.profiler))


def swanlab_callback(cfg):
    """LF's SwanLab callback (swanlab.integration.transformers.SwanLabCallback + the public-config file)."""
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    args = cfg.finetuning
    if args.swanlab_api_key is not None and args.swanlab_mode == "cloud":
        swanlab.login(api_key=args.swanlab_api_key)
    if args.swanlab_lark_webhook_url is not None:
        from swanlab.plugin.notification import LarkCallback

        swanlab.register_callbacks([LarkCallback(webhook_url=args.swanlab_lark_webhook_url,
                                                 secret=args.swanlab_lark_secret)])
    settings = {name: _plain(dataclasses.asdict(getattr(cfg, name)))
                for name in ("model", "data", "finetuning", "generating")}

    class TuneforgeSwanLabCallback(SwanLabCallback):
        written = False

        def setup(self, args, state, model=None, **kwargs):
            super().setup(args, state, model)
            if self.written or not state.is_world_process_zero:
                return
            try:
                run = swanlab.get_run()
            except RuntimeError:  # no run (yet)
                return
            if run is None:
                return
            self.written = True
            run.config.update({f"{name}_args": values for name, values in settings.items()})  # LF's ReporterCallback
            Path(args.output_dir, SWANLAB_CONFIG).write_text(json.dumps(_public_config(run), indent=2),
                                                            encoding="utf-8")

    kwargs = {"project": args.swanlab_project, "workspace": args.swanlab_workspace,
              "experiment_name": args.swanlab_run_name, "mode": args.swanlab_mode, "log_dir": args.swanlab_logdir,
              "tags": ["tuneforge", "LlamaFactory"]}
    return TuneforgeSwanLabCallback(**{key: value for key, value in kwargs.items() if value is not None})


def _public_config(run) -> dict:
    """What LF writes to swanlab_public_config.json (`run.public.json()`; newer swanlab: the run's ids)."""
    try:
        return run.public.json()
    except AttributeError:
        pass
    public = {}
    for key in ("id", "name", "mode", "url", "dir"):
        try:
            value = getattr(run, key)
        except Exception:  # a swanlab property that does not apply in this mode
            continue
        public[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return public


def _plain(values: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
