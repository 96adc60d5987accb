"""Batch prediction with BLEU / ROUGE (LLaMA-Factory's `do_predict` + `predict_with_generate`)."""
