"""Chunked LM-head + cross-entropy: same loss and same gradients as the model's own forward."""

from __future__ import annotations


import pytest
from log_capture import LogRecords
import torch

from tuneforge.data.collate import PackedCollator, PaddedCollator
from tuneforge.model.lm_parts import resolve_lm_parts
from tuneforge.train.loss import chunked_causal_lm_loss

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def _samples(vocab_size: int) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for length, prompt in ((7, 3), (11, 2), (4, 0)):
        ids = torch.randint(5, vocab_size, (length,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_parity(model, batch, chunk_size, num_items_in_batch=None):
    """Chunked loss/grads vs `model(**batch).loss` (HF's ForCausalLMLoss)."""
    parts, reason = resolve_lm_parts(model, batch)
    assert parts is not None, reason
    model.zero_grad()
    loss = chunked_causal_lm_loss(parts, batch, chunk_size=chunk_size, num_items_in_batch=num_items_in_batch)
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    reference = model(**batch, use_cache=False, **extra).loss
    reference.backward()
    expected = _grads(model)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])  # smaller and larger than the 16 label tokens
def test_chunked_loss_parity_packed(tiny_llama, chunk_size):
    batch = PackedCollator()(_samples(tiny_llama.config.vocab_size))
    assert int((batch["labels"][0, 1:] != -100).sum()) == 16
    _assert_parity(tiny_llama, batch, chunk_size)


def test_chunked_loss_parity_padded_with_num_items(tiny_llama):
    batch = PaddedCollator(pad_token_id=0)(_samples(tiny_llama.config.vocab_size))
    _assert_parity(tiny_llama, batch, chunk_size=3)
    # gradient accumulation: sum / number of label tokens of the whole accumulated batch
    _assert_parity(tiny_llama, batch, chunk_size=3, num_items_in_batch=torch.tensor(40))


def test_chunked_loss_parity_qwen2(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    _assert_parity(model, PackedCollator()(_samples(model.config.vocab_size)), chunk_size=6)


def test_chunked_loss_tied_embeddings():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _assert_parity(model, PackedCollator()(_samples(TINY["vocab_size"])), chunk_size=4)


@pytest.mark.parametrize("chunk_size", [3, 64])  # several chunks, one chunk
def test_linear_cross_entropy_under_bf16_autocast_runs_the_head_in_bf16_as_autograd_would(chunk_size):
    """Under bf16 autocast a plain head's logits and both its gradient products are bf16 products (before: the two
    backward products ran in float32, ~2x the time on a CPU with AVX512-BF16 / AMX); the results match autograd
    through the autocast head to bf16 precision; outside autocast nothing changes (float32 products), and under
    fp16 autocast only the logits are fp16 (unscaled gradient sums stay in float32's range)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tuneforge.train.loss import LinearCrossEntropySum

    class ProductDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(5)
    hidden0 = torch.randn(10, 16, generator=gen)
    weight0 = torch.randn(300, 16, generator=gen) * 0.3
    targets = torch.randint(0, 300, (10,), generator=gen)
    chunks = -(-10 // chunk_size)
    with torch.autocast("cpu", dtype=torch.float16), ProductDtypes() as products:
        LinearCrossEntropySum.apply(hidden0.clone().requires_grad_(), weight0.clone().requires_grad_(), None,
                                    targets, chunk_size, None)
    assert [{dtype for dtype in dtypes} for dtypes in products.seen] == [{torch.float16}, {torch.float32},
                                                                        {torch.float32}] * chunks
    for autocast, product_dtype in ((True, torch.bfloat16), (False, torch.float32)):
        hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), ProductDtypes() as products:
            loss = LinearCrossEntropySum.apply(hidden, weight, None, targets, chunk_size, None)
        loss.backward()
        assert len(products.seen) == 3 * chunks  # logits, d hidden, d W per chunk
        assert {dtype for dtypes in products.seen for dtype in dtypes} == {product_dtype}
        assert hidden.grad.dtype == weight.grad.dtype == torch.float32
        ref_hidden, ref_weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            reference = torch.nn.functional.cross_entropy(torch.nn.functional.linear(ref_hidden, ref_weight).float(),
                                                          targets, reduction="sum")
        reference.backward()
        tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, reference, **tolerance)
        torch.testing.assert_close(hidden.grad, ref_hidden.grad, **tolerance)
        torch.testing.assert_close(weight.grad, ref_weight.grad, **tolerance)


def test_chunked_loss_gemma2_final_logit_softcapping():
    from transformers import AutoModelForCausalLM, Gemma2Config

    torch.manual_seed(0)
    config = Gemma2Config(**TINY, head_dim=8, final_logit_softcapping=2.0, attn_implementation="eager")
    model = AutoModelForCausalLM.from_config(config)
    parts, _ = resolve_lm_parts(model)
    assert parts.final_logit_softcapping == 2.0
    _assert_parity(model, PaddedCollator(pad_token_id=0)(_samples(TINY["vocab_size"])), chunk_size=4)


def test_chunked_loss_peft_lora_including_lm_head(tiny_llama):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    model = get_peft_model(tiny_llama, config)
    parts, _ = resolve_lm_parts(model)
    assert "lora" in type(parts.head).__module__  # the LoRA-wrapped head is the one called
    _assert_parity(model, PackedCollator()(_samples(tiny_llama.config.vocab_size)), chunk_size=4)
    grads = _grads(model)
    assert grads and all("lora_" in name for name in grads)


def test_no_label_tokens_gives_zero_loss_and_backward_works(tiny_llama):
    batch = PackedCollator()([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}])
    parts, _ = resolve_lm_parts(tiny_llama)
    loss = chunked_causal_lm_loss(parts, batch)
    loss.backward()
    assert loss.item() == 0.0


def test_unsupported_models_and_inputs_are_reported():
    from transformers import AutoModelForCausalLM, GraniteConfig, LlamaConfig

    granite = AutoModelForCausalLM.from_config(GraniteConfig(**TINY, logits_scaling=4.0))
    parts, reason = resolve_lm_parts(granite)
    assert parts is None
    assert reason == "model type 'granite' (GraniteForCausalLM) is not on the chunked-loss list"
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**TINY))
    parts, reason = resolve_lm_parts(llama, {"input_ids": None, "labels": None, "pixel_values": None})
    assert parts is None and reason == "batch has inputs the decoder alone does not take: ['pixel_values']"


def test_trainer_falls_back_to_plain_forward_and_logs_once(tmp_path):
    from transformers import AutoModelForCausalLM, GraniteConfig, Seq2SeqTrainingArguments

    from tuneforge.train.trainer import TuneforgeTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GraniteConfig(**TINY, logits_scaling=4.0))
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = TuneforgeTrainer(model=model, args=args, data_collator=PackedCollator())
    batch = PackedCollator()(_samples(TINY["vocab_size"]))
    with LogRecords("tuneforge.train.trainer") as records:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(16))
        trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(16))
    reference = model(**batch, use_cache=False).loss  # mean over the same 16 tokens
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    assert records.messages == [
        "Chunked LM loss not used (model type 'granite' (GraniteForCausalLM) is not on the chunked-loss "
        "list); computing full logits instead."
    ]
