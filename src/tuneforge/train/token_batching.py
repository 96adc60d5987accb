"""sft with LF v1's token-budget micro-batches (`batching_strategy: dynamic_batching | dynamic_padding_free`):
the Trainer's training DataLoader takes its micro-batches from `TokenBudgetBatchSampler` (data/token_batches.py);
everything else -- collator, loss normalised over the label tokens of the accumulated step, evaluation -- is
TuneforgeTrainer's."""

from __future__ import annotations

import functools
import logging

from tuneforge.train.trainer import TuneforgeTrainer

logger = logging.getLogger("tuneforge")


class TokenBudgetTrainer(TuneforgeTrainer):
    def __init__(self, *args, token_budget: int, padded: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.token_budget, self.padded_budget = token_budget, padded

    def get_train_dataloader(self):
        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        from tuneforge.data.token_batches import TokenBudgetBatchSampler

        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        lengths = [len(ids) for ids in dataset["input_ids"]]
        sampler = TokenBudgetBatchSampler(lengths, self.token_budget, padded=self.padded_budget,
                                          seed=self.args.data_seed or self.args.seed,
                                          shuffle=self.args.train_sampling_strategy != "sequential")
        logger.info("micro-batches of at most %d %s tokens: %d this epoch for %d samples", self.token_budget,
                    "padded" if self.padded_budget else "real", len(sampler), len(lengths))
        workers = self.args.dataloader_num_workers
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=workers,
                            pin_memory=self.args.dataloader_pin_memory,
                            worker_init_fn=functools.partial(seed_worker, num_workers=workers,
                                                             rank=self.args.process_index))
        return self.accelerator.prepare(loader)


def sft_trainer_class(cfg):
    """`TokenBudgetTrainer` with the run's budget when `batching_strategy` asks for one, else None (the default)."""
    if not cfg.batching.token_budget:
        return None
    budget = cfg.data.cutoff_len * cfg.training.per_device_train_batch_size
    return functools.partial(TokenBudgetTrainer, token_budget=budget,
                             padded=cfg.batching.batching_strategy == "dynamic_batching")
