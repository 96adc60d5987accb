"""OpenAI-compatible API server (`tuneforge api x.yaml`): api/server.py (routes), api/completions.py (chat),
api/protocol.py (request checks); decoding is infer/'s batch worker."""

from __future__ import annotations

import os
from pathlib import Path

from tuneforge.api.server import ApiService, create_app

__all__ = ["ApiService", "build_service", "create_app"]


def build_service(cfg, *, max_batch: int = 8, max_waiting: int = 64) -> ApiService:
    """Load what `cfg` names: a reward model (value head next to the weights) is served for scoring, any other
    model for chat through a `BatchWorker`. The model's name: `API_MODEL_NAME` (LLaMA-Factory's variable) or
    the model folder's name."""
    from tuneforge.infer.reward import is_reward_model

    name = os.environ.get("API_MODEL_NAME") or Path(str(cfg.model.model_name_or_path).rstrip("/")).name
    if is_reward_model(cfg):
        from tuneforge.infer.reward import RewardScorer

        return ApiService(model_name=name, scorer=RewardScorer.from_config(cfg))
    from tuneforge.infer.batch_worker import BatchWorker
    from tuneforge.infer.engine import ChatEngine

    engine = ChatEngine.from_config(cfg)
    return ApiService(model_name=name, engine=engine, worker=BatchWorker(engine, max_batch, max_waiting))
