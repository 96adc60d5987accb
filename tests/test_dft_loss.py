"""`use_dft_loss` (LLaMA-Factory's DFT loss, `dft_loss_func`) and, at the end, `use_eaft_loss` (EAFT): per-token cross-entropy weighted by the detached
probability of the label, summed and divided like the plain loss; on the chunked path and the plain forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tuneforge.data.collate import PackedCollator
from tuneforge.model.lm_parts import resolve_lm_parts
from tuneforge.train.loss import (TokenWeighting, chunked_causal_lm_eval, chunked_causal_lm_loss, chunked_cross_entropy_sum,
                                  logits_loss)
from tuneforge.train.trainer import TuneforgeTrainer


def test_dft_loss_by_hand():
    # vocab of 2; label 1 with p = 3/4, then label 0 with p = 1/2; the last position predicts nothing
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]], requires_grad=True)
    labels = torch.tensor([[-100, 1, 0]])
    loss = logits_loss(logits, labels, weighting=TokenWeighting("dft"))
    expected = (0.75 * math.log(4 / 3) + 0.5 * math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logits_loss(logits, labels).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    assert logits_loss(logits, labels, num_items_in_batch=4, weighting=TokenWeighting("dft")).item() == pytest.approx(expected / 2, rel=1e-6)
    loss.backward()
    # the weight p is a constant: d/dlogits = p * (softmax - onehot) / N
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([0.25, -0.25]) * 0.75 / 2)
    torch.testing.assert_close(logits.grad[0, 1], torch.tensor([-0.5, 0.5]) * 0.5 / 2)
    torch.testing.assert_close(logits.grad[0, 2], torch.zeros(2))


@pytest.mark.parametrize("wrapped_head", [False, True])  # nn.Linear: fused gradients; other heads: autograd per chunk
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_dft_matches_full_logits(wrapped_head, chunk_size):
    torch.manual_seed(0)
    linear = nn.Linear(8, 11)
    head = nn.Sequential(linear) if wrapped_head else linear
    hidden = torch.randn(7, 8, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    got = chunked_cross_entropy_sum(hidden, targets, head, chunk_size=chunk_size, weighting=TokenWeighting("dft"))
    got.backward()
    grads = [hidden.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone()]
    hidden.grad = linear.weight.grad = linear.bias.grad = None
    losses = nn.functional.cross_entropy(linear(hidden), targets, reduction="none")
    reference = (losses * torch.exp(-losses).detach()).sum()  # LF's _dft_cross_entropy, before the division
    reference.backward()
    torch.testing.assert_close(got, reference)
    for mine, theirs in zip(grads, (hidden.grad, linear.weight.grad, linear.bias.grad)):
        torch.testing.assert_close(mine, theirs)
    plain = chunked_cross_entropy_sum(hidden.detach(), targets, head, chunk_size=chunk_size)
    assert got.item() < plain.item()  # every weight p < 1


def _batch(vocab_size):
    gen = torch.Generator().manual_seed(3)
    samples = []
    for length, prompt in ((7, 3), (11, 2)):
        ids = torch.randint(5, vocab_size, (length,), generator=gen).tolist()
        samples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return PackedCollator()(samples)


def test_model_dft_loss_chunked_equals_plain_forward(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    batch = _batch(model.config.vocab_size)
    parts, _ = resolve_lm_parts(model, batch)
    chunked = chunked_causal_lm_loss(parts, batch, chunk_size=4, num_items_in_batch=torch.tensor(13), weighting=TokenWeighting("dft"))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        evaluated, _, _ = chunked_causal_lm_eval(parts, batch, chunk_size=4, num_items_in_batch=13, weighting=TokenWeighting("dft"))
    reference = logits_loss(logits, batch["labels"], torch.tensor(13), weighting=TokenWeighting("dft"))
    torch.testing.assert_close(chunked, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(evaluated, reference, atol=1e-6, rtol=1e-5)


def test_trainer_plain_forward_path_uses_dft(tmp_path):
    from transformers import AutoModelForCausalLM, GraniteConfig, Seq2SeqTrainingArguments

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=4.0)
    model = AutoModelForCausalLM.from_config(config)  # not on the chunked-loss list: the model's own forward
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = TuneforgeTrainer(model=model, args=args, data_collator=PackedCollator(), token_weighting=TokenWeighting("dft"))
    batch = _batch(97)
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(14))
    with torch.no_grad():
        outputs = model(**batch, use_cache=False)
    torch.testing.assert_close(loss, logits_loss(outputs.logits, batch["labels"], torch.tensor(14), weighting=TokenWeighting("dft")))
    assert loss.item() < outputs.loss.item() / 2  # far from the plain cross-entropy


def test_tiny_run_trains_on_the_dft_loss(tiny_llama_dir, tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from tuneforge.config.args import TrainingArguments

    texts = ["Hello, who are you? I am an AI assistant.", "The quick brown fox jumps over the lazy dog."]
    rows = [{"input_ids": ids, "labels": ids} for ids in (tiny_tokenizer(t)["input_ids"] for t in texts)]
    first_losses = {}
    for dft in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        args = TrainingArguments(output_dir=str(tmp_path / str(dft)), report_to="none", use_cpu=True, max_steps=2,
                                 per_device_train_batch_size=2, learning_rate=5e-3, logging_steps=1,
                                 save_strategy="no", seed=42, disable_tqdm=True)
        trainer = TuneforgeTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                   data_collator=PackedCollator(), token_weighting=TokenWeighting("dft") if dft else None)
        trainer.train()
        first_losses[dft] = [r["loss"] for r in trainer.state.log_history if "loss" in r][0]
    # a random model gives each label p ~ 1/vocab: the DFT loss is ~ CE / vocab
    vocab = len(tiny_tokenizer)
    assert first_losses[False] > 5.0
    assert first_losses[True] == pytest.approx(first_losses[False] * math.exp(-first_losses[False]), rel=0.5)
    assert first_losses[True] < first_losses[False] / vocab * 5


def test_use_dft_loss_config(monkeypatch):
    from tuneforge.config import load_config_dict, validate
    from tuneforge.errors import ConfigError

    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    base = {"model_name_or_path": "some/model", "output_dir": "out", "dataset": "d"}
    assert load_config_dict({**base, "use_dft_loss": True}).finetuning.use_dft_loss is True
    with pytest.raises(ConfigError, match="use_dft_loss"):
        load_config_dict({**base, "stage": "pt", "use_dft_loss": True})


# ---- EAFT (`use_eaft_loss`, `eaft_alpha`) ----------------------------------------------------------------

def _lf_eaft_reference(logits, targets, alpha, num_items=None):
    """LF 0.9.5's `_eaft_cross_entropy`, written out: CE x ((entropy of the top-20 softmax) / 3) ** alpha."""
    losses = nn.functional.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        top = torch.topk(logits, k=20, dim=-1).values
        log_p = top - torch.logsumexp(top, dim=-1, keepdim=True)
        weight = (-(log_p.exp() * log_p).sum(-1) / 3.0) ** alpha
    total = (losses * weight).sum()
    return total / num_items if num_items is not None else total / len(targets)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_eaft_loss_equals_llamafactorys(alpha):
    torch.manual_seed(1)
    logits = torch.randn(1, 6, 40, requires_grad=True)
    labels = torch.tensor([[-100, 3, 7, -100, 39, 0]])
    eaft = TokenWeighting("eaft", alpha)
    got = logits_loss(logits, labels, num_items_in_batch=5, weighting=eaft)
    keep = labels[0, 1:] != -100
    reference = _lf_eaft_reference(logits[0, :-1][keep], labels[0, 1:][keep], alpha, num_items=5)
    torch.testing.assert_close(got, reference)
    got.backward()
    mine = logits.grad.clone()
    logits.grad = None
    reference.backward()
    torch.testing.assert_close(mine, logits.grad)  # the weight is a constant for autograd, as in LF


@pytest.mark.parametrize("wrapped_head", [False, True])
def test_chunked_eaft_matches_full_logits(wrapped_head):
    torch.manual_seed(0)
    linear = nn.Linear(8, 30)
    head = nn.Sequential(linear) if wrapped_head else linear
    hidden = torch.randn(9, 8, requires_grad=True)
    targets = torch.randint(0, 30, (9,))
    eaft = TokenWeighting("eaft", 1.0)
    got = chunked_cross_entropy_sum(hidden, targets, head, chunk_size=4, weighting=eaft)
    got.backward()
    grads = [hidden.grad.clone(), linear.weight.grad.clone()]
    hidden.grad = linear.weight.grad = None
    reference = _lf_eaft_reference(linear(hidden), targets, 1.0, num_items=1)
    reference.backward()
    torch.testing.assert_close(got, reference)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], linear.weight.grad)


def test_use_eaft_loss_config(monkeypatch):
    from tuneforge.config import load_config_dict, validate
    from tuneforge.errors import ConfigError
    from tuneforge.train.workflow import token_weighting

    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    base = {"model_name_or_path": "some/model", "output_dir": "out", "dataset": "d"}
    cfg = load_config_dict({**base, "use_eaft_loss": True, "eaft_alpha": 0.5})
    assert token_weighting(cfg.finetuning) == TokenWeighting("eaft", 0.5)
    assert token_weighting(load_config_dict(base).finetuning) is None
    with pytest.raises(ConfigError, match="`use_eaft_loss` is a loss of `stage: sft`"):
        load_config_dict({**base, "stage": "dpo", "use_eaft_loss": True})
    with pytest.raises(ConfigError, match="are different losses"):
        load_config_dict({**base, "use_dft_loss": True, "use_eaft_loss": True})

