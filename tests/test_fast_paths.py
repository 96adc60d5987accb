"""The training fast paths compute exactly what the plain code paths compute.

- `packed_sdpa` (model/attention.py): one causal SDPA per sample of a packed row == transformers'
  `sdpa` with its block-causal mask, forward and gradients; everything else is plain `sdpa`.
- shared prefixes (`PackedCollator(share_prefix=True)`): the batch's common label-free prefix computed
  once == every sample computed whole: same loss, same gradients, fewer tokens.
- `FastLoraLinear` (model/fast_lora.py): one autograd node per LoRA layer == peft's forward,
  outputs and gradients; unsupported setups take peft's path.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tuneforge.data.collate import PackedCollator
from tuneforge.model.attention import (packed_sdpa_attention_forward, packed_segments, register_packed_sdpa,
                                       sample_token_count)
from tuneforge.model.fast_lora import FastLoraLinear, enable_fast_lora
from tuneforge.model.lm_parts import resolve_lm_parts
from tuneforge.train.loss import chunked_causal_lm_eval, chunked_causal_lm_loss, sample_accuracies


def test_packed_segments():
    assert packed_segments(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6) == [(3, 0), (2, 0), (1, 0)]
    assert packed_segments(torch.tensor([[0, 1, 2, 3]]), 4) is None  # one sample: nothing to split
    assert packed_segments(torch.tensor([[5, 6, 0, 1]]), 4) is None  # a KV-cache step never restarts at 0 first
    assert packed_segments(torch.tensor([[0, 1, 0, 1], [0, 1, 0, 1]]), 4) is None  # not a single row
    assert packed_segments(None, 4) is None
    # shared prefixes: a segment starting at s > 0 continues the last one that started at 0
    assert packed_segments(torch.tensor([[0, 1, 2, 3, 2, 3, 0, 1, 1]]), 9) == [(4, 0), (2, 2), (2, 0), (1, 1)]
    assert packed_segments(torch.tensor([[0, 1, 2, 5, 6]]), 5) is None  # starts past what it could continue
    assert sample_token_count(torch.tensor([[0, 1, 2, 3, 2, 3, 0, 1, 1]])) == 4 + 4 + 2 + 2
    assert sample_token_count(torch.tensor([[0, 1, 2]])) == 3


def _samples(vocab_size: int, lengths=((9, 4), (5, 0), (1, 0), (12, 6))) -> list[dict]:
    gen = torch.Generator().manual_seed(11)
    out = []
    for length, prompt in lengths:
        ids = torch.randint(10, vocab_size, (length,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _loss_and_grads(model, batch):
    model.zero_grad()
    parts, reason = resolve_lm_parts(model, batch)
    assert parts is not None, reason
    loss = chunked_causal_lm_loss(parts, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_packed_sdpa_training_step_equals_masked_sdpa(request, model_fixture):
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(model_fixture)
    reference = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    packed = AutoModelForCausalLM.from_pretrained(path, attn_implementation=register_packed_sdpa(), dtype=torch.float32)
    batch = PackedCollator()(_samples(reference.config.vocab_size))
    want_loss, want_grads = _loss_and_grads(reference, batch)
    got_loss, got_grads = _loss_and_grads(packed, batch)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) == len(list(reference.parameters()))
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_packed_sdpa_leaves_generation_unchanged(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    packed = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=register_packed_sdpa()).eval()
    prompt = torch.tensor([[5, 17, 33, 2, 9, 41]])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(packed.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


def _reference_attention(q, k, v, position_ids, window):
    """Attention of a packed row from its definition: token t sees token u of its own sample when u <= t (and
    t - u < window); a continuation (first position s > 0) sees the first s tokens of its root as its own."""
    positions = position_ids[0].tolist()
    starts = [0] + [t for t in range(1, len(positions)) if positions[t] != positions[t - 1] + 1]
    outputs = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(positions)
        if positions[start] == 0:
            root = start
        keys = list(range(root, root + positions[start])) + list(range(start, end))
        for t in range(start, end):
            allowed = [u for j, u in enumerate(keys) if j <= positions[t] and (not window or positions[t] - j < window)]
            scores = torch.einsum("hd,hnd->hn", q[0, :, t], k[0, :, allowed]) / q.shape[-1] ** 0.5
            outputs.append(torch.einsum("hn,hnd->hd", torch.softmax(scores, -1), v[0, :, allowed]))
    return torch.stack(outputs, 0)[None]  # [1, T, heads, head_dim]


@pytest.mark.parametrize("window", [None, 2, 3])
@pytest.mark.parametrize("positions", [[0, 1, 2, 0, 1], [0, 1, 2, 3, 2, 3, 4, 0, 1, 1]])
def test_packed_sdpa_follows_the_layout_and_the_sliding_window(window, positions):
    torch.manual_seed(0)
    module = nn.Module()
    module.sliding_window, module.is_causal = window, True
    length = len(positions)
    q, k, v = (torch.randn(1, 2, length, 8) for _ in range(3))
    mask = torch.zeros(1, 1, length, length, dtype=torch.bool)  # whatever transformers built: not used
    out, _ = packed_sdpa_attention_forward(module, q, k, v, mask, position_ids=torch.tensor([positions]))
    torch.testing.assert_close(out, _reference_attention(q, k, v, torch.tensor([positions]), window))


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("packed", [True, False])
def test_packed_sdpa_runs_16_bit_attention_in_float32_on_cpu(autocast, packed):
    """bf16 q/k/v (or CPU bf16 autocast, which would pick a bf16 SDPA kernel, ~3x slower): float32 attention, the
    result in the values' dtype -- exactly the float32 computation rounded once; a padded (not packed) batch too."""
    torch.manual_seed(0)
    module = nn.Module()
    module.sliding_window, module.is_causal = None, True
    positions = [0, 1, 2, 0, 1] if packed else [0, 1, 2, 3, 4]
    q, k, v = (torch.randn(1, 2, 5, 8).bfloat16() for _ in range(3))
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool) if packed else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = packed_sdpa_attention_forward(module, q, k, v, mask, position_ids=torch.tensor([positions]))
    reference = _reference_attention(q.float(), k.float(), v.float(), torch.tensor([positions]), None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.bfloat16(), atol=0, rtol=0.008)  # one bf16 rounding: 2^-7 relative


def _prefixed_samples(vocab_size: int, shared: int = 10) -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    prefix = torch.randint(10, vocab_size, (shared,), generator=gen).tolist()
    out = []
    for rest, prompt in ((7, 3), (4, 1), (9, 5), (1, 1)):  # (tokens after the prefix, of which prompt)
        ids = prefix + torch.randint(10, vocab_size, (rest,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (shared + prompt) + ids[shared + prompt:]})
    return out


def test_shared_prefix_layout():
    samples = _prefixed_samples(100)
    batch = PackedCollator(share_prefix=True)(samples)
    plain = PackedCollator()(samples)
    shared = 10 + 1 - 1  # prefix 10; the shortest sample (10 + 1 tokens) keeps one token; no label before 11
    assert batch["input_ids"].shape[1] == plain["input_ids"].shape[1] - 3 * shared
    assert batch["position_ids"][0].tolist() == [*range(17), *range(10, 14), *range(10, 19), *range(10, 11)]
    assert sample_token_count(batch["position_ids"]) == plain["input_ids"].shape[1]
    assert batch["labels"][batch["labels"] != -100].tolist() == plain["labels"][plain["labels"] != -100].tolist()
    # a label inside the common prefix, a short common prefix or one sample: nothing is shared
    labelled = [dict(s, labels=s["input_ids"]) for s in samples]
    assert torch.equal(PackedCollator(share_prefix=True)(labelled)["input_ids"], PackedCollator()(labelled)["input_ids"])
    short = [{"input_ids": s["input_ids"][6:], "labels": s["labels"][6:]} for s in samples]
    assert PackedCollator(share_prefix=True)(short)["input_ids"].shape == PackedCollator()(short)["input_ids"].shape
    assert torch.equal(PackedCollator(share_prefix=True)(samples[:1])["input_ids"], PackedCollator()(samples[:1])["input_ids"])


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_shared_prefix_training_step_equals_unshared(request, model_fixture):
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(model_fixture)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=register_packed_sdpa(), dtype=torch.float32)
    samples = _prefixed_samples(model.config.vocab_size)
    want_loss, want_grads = _loss_and_grads(model, PackedCollator()(samples))
    got_loss, got_grads = _loss_and_grads(model, PackedCollator(share_prefix=True)(samples))
    torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_shared_prefix_keeps_per_sample_accuracy(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=register_packed_sdpa()).eval()
    samples = _prefixed_samples(model.config.vocab_size)
    accuracies = []
    for collator in (PackedCollator(), PackedCollator(share_prefix=True)):
        batch = collator(samples)
        with torch.no_grad():
            _, hits, keep = chunked_causal_lm_eval(resolve_lm_parts(model, batch)[0], batch)
        accuracies.append(sample_accuracies(hits, keep, batch))
    assert accuracies[0].numel() == sum(any(label != -100 for label in s["labels"][1:]) for s in samples) == 3
    torch.testing.assert_close(accuracies[1], accuracies[0])


# ---- FastLoraLinear ---------------------------------------------------------------------------

def _lora_model(dropout: float = 0.0, bias: bool = True, **lora_kwargs):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 20, bias=bias), nn.SiLU(), nn.Linear(20, 6, bias=bias))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"], **lora_kwargs)
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():  # B starts at zero: make the adapter do something
        if "lora_B" in name:
            nn.init.normal_(param, std=0.5)
    return model


def _run(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("bias", [True, False])
def test_fast_lora_equals_peft_forward_and_gradients(bias):
    peft_model = _lora_model(bias=bias)
    fast_model = copy.deepcopy(peft_model)
    assert enable_fast_lora(fast_model) == 2
    assert all(type(m) is FastLoraLinear for m in fast_model.modules() if hasattr(m, "lora_A"))
    x = torch.randn(3, 5, 12)
    want, want_dx, want_grads = _run(peft_model, x)
    got, got_dx, got_grads = _run(fast_model, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_dx, want_dx)
    assert got_grads.keys() == want_grads.keys() and {n.split(".")[-3] for n in got_grads} == {"lora_A", "lora_B"}
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], msg=name)
    assert fast_model.state_dict().keys() == peft_model.state_dict().keys()


def test_fast_lora_takes_peft_path_when_it_does_not_apply():
    x = torch.randn(2, 4, 12)
    model = _lora_model(dropout=0.5)  # dropout: peft's path (same random stream -> same output)
    enable_fast_lora(model)
    layer = model.base_model.model[0]
    assert layer._fast_parts(x, (), {}) is None
    model = _lora_model()
    enable_fast_lora(model)
    layer = model.base_model.model[0]
    assert layer._fast_parts(x, (), {}) is not None
    with model.disable_adapter():  # the DPO reference forward: base model only
        torch.testing.assert_close(layer(x), layer.base_layer(x))
    assert layer._fast_parts(x.double(), (), {}) is None  # dtypes differ
    merged = copy.deepcopy(model).merge_and_unload()  # merging is still peft's
    torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=1e-5)


def test_fast_lora_is_used_for_trainable_lora_runs(tiny_llama_dir):
    from tuneforge.config.args import FinetuningArguments, ModelArguments
    from tuneforge.model.loader import load_model

    model_args = ModelArguments(model_name_or_path=str(tiny_llama_dir))
    finetuning = FinetuningArguments(finetuning_type="lora", lora_target="all", lora_rank=4)
    model = load_model(model_args, finetuning, is_trainable=True)
    fast = [m for m in model.modules() if type(m) is FastLoraLinear]
    assert len(fast) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down


# ---- torch_compile ----------------------------------------------------------------------------

def test_torch_compile_compiles_decoder_layers_in_place(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.model.compile import compile_decoder_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=register_packed_sdpa())
    keys = list(model.state_dict())
    batch = PackedCollator()(_samples(model.config.vocab_size))
    want_loss, want_grads = _loss_and_grads(model, batch)
    assert compile_decoder_layers(model) == 2
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert list(model.state_dict()) == keys  # in place: no `_orig_mod.` prefixes in checkpoints
    got_loss, got_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


# ---- all fast paths together vs the plain reference ---------------------------------------------

def test_small_lora_run_with_every_fast_path_follows_the_plain_fp32_run(tiny_llama_dir):
    """Five AdamW steps of LoRA on packed batches: packed SDPA + fused LoRA + single-chunk head
    vs masked SDPA + peft's LoRA + a checkpointed multi-chunk head: the same losses."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def build(attn, fast):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attn, dtype=torch.float32)
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights="gaussian",
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        model = get_peft_model(model, config)
        if fast:
            assert enable_fast_lora(model) == 14
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    fast_model, fast_opt = build(register_packed_sdpa(), fast=True)
    plain_model, plain_opt = build("sdpa", fast=False)
    vocab = fast_model.config.vocab_size
    losses = {"fast": [], "plain": []}
    for step in range(5):
        lengths = ((9 + step, 4), (5, 0), (14, 6 - step), (3, 1))
        batch = PackedCollator()(_samples(vocab, lengths))
        for name, model, optimizer, chunk in (("fast", fast_model, fast_opt, 1024), ("plain", plain_model, plain_opt, 4)):
            parts, _ = resolve_lm_parts(model, batch)
            loss = chunked_causal_lm_loss(parts, batch, chunk_size=chunk)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[name].append(float(loss))
    assert losses["plain"][-1] < losses["plain"][0]  # it trains
    torch.testing.assert_close(torch.tensor(losses["fast"]), torch.tensor(losses["plain"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reentrant", [False, True])  # LF's use_reentrant_gc
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama_dir, reentrant):
    """Activation checkpointing recomputes packed SDPA and the fused LoRA layers in backward."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=register_packed_sdpa())
        model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.0, init_lora_weights="gaussian",
                                                 target_modules=["q_proj", "v_proj", "down_proj"]))
        enable_fast_lora(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        layers = model.get_base_model().model.layers
        assert all(layer.gradient_checkpointing == checkpointing for layer in layers)
        return _loss_and_grads(model, PackedCollator()(_samples(model.config.vocab_size)))

    plain_loss, plain = grads(False)
    ckpt_loss, ckpt = grads(True)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    assert ckpt.keys() == plain.keys() and len(plain) == 2 * 2 * 3
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, msg=name)
