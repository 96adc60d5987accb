"""Training workflows: one recipe per stage over the shared `TuneforgeTrainer`.

- `trainer.py`: `TuneforgeTrainer` (chunked loss, token counting, LoRA+, atomic final save)
- `loss.py`: causal-LM loss at label positions only, LM head + cross-entropy in chunks
- `callbacks.py`: `LogCallback` (trainer_log.jsonl, running_status.json, console line), `plot_loss`
- `resume.py`: `detect_resume(training_args)`

Import from the submodules; this package does not import torch/transformers on its own.
"""
