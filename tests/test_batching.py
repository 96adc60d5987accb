"""Continuous batching (infer/batching.py, infer/slot_cache.py): several sequences decoded together give
the answers each gets alone, sequences join and leave between steps, each keeps its own settings."""

from __future__ import annotations

import pytest
import torch

from tuneforge.infer.decoding import cache_argument
from tuneforge.infer.engine import ChatEngine
from tuneforge.infer.slot_cache import SlotKVCache
from test_infer import USER, MiniChatML, scripted_engine


def _engine(path, fast=True, **settings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return ChatEngine(model, tokenizer, MiniChatML(stop_words=()), {"do_sample": False, **settings}, fast_decode=fast)


def _prompts(engine, count=7):
    """Prompts of different lengths (1..count user turns of different texts)."""
    return [engine.encode_prompt([{"role": "user", "content": f"Question {i}: " + "why? " * i}] * (1 + i % 3))
            for i in range(count)]


@pytest.mark.parametrize("fixture_dir", ["tiny_llama_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batched_greedy_answers_equal_one_at_a_time(request, fixture_dir, fast, penalty):
    engine = _engine(request.getfixturevalue(fixture_dir), fast=fast)
    assert (engine.fast_step is not None) == fast
    prompts = _prompts(engine)
    budgets = dict(max_new_tokens=40, repetition_penalty=penalty)
    alone = [engine.generate_ids(p, **budgets) for p in prompts]
    finished = []
    together = engine.generate_batch(prompts, max_batch=3, on_done=lambda i, ids: finished.append(i), **budgets)
    assert together == alone
    assert sorted(finished) == list(range(len(prompts)))  # 7 prompts through 3 slots: later ones joined


def test_lean_batch_step_logits_match_single_steps(tiny_llama_dir):
    engine = _engine(tiny_llama_dir)
    decoder_prompts = _prompts(engine, 4)
    from tuneforge.infer.batching import BatchDecoder

    decoder = BatchDecoder(engine, max_batch=4)
    requests = [decoder.add(p, engine.settings.with_overrides(max_new_tokens=5)) for p in decoder_prompts]
    decoder.step()  # prefill all four + first decode step
    assert decoder.slots.count == 4 and decoder.slots.lengths == [len(p) + 1 for p in decoder_prompts]
    for request, prompt in zip(requests, decoder_prompts):
        ids = torch.tensor([prompt + request.generated])
        with torch.inference_mode():
            expected = engine.model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(request.logits, expected, rtol=1e-4, atol=1e-4)


def test_each_request_keeps_its_own_settings_and_seed(tiny_llama_dir):
    engine = _engine(tiny_llama_dir)
    prompts = _prompts(engine, 3)
    sampled = dict(do_sample=True, temperature=1.5, top_k=0, top_p=1.0, seed=7, max_new_tokens=12)
    from tuneforge.infer.batching import BatchDecoder

    decoder = BatchDecoder(engine, max_batch=4)
    greedy = decoder.add(prompts[0], engine.settings.with_overrides(max_new_tokens=6))
    seeded = decoder.add(prompts[1], engine.settings.with_overrides(**sampled))
    other_seed = decoder.add(prompts[1], engine.settings.with_overrides(**{**sampled, "seed": 8}))
    while not decoder.idle:
        decoder.step()
    assert greedy.generated == engine.generate_ids(prompts[0], max_new_tokens=6)
    assert len(greedy.generated) == 6 and greedy.finish_reason == "length"
    assert seeded.generated == engine.generate_ids(prompts[1], **sampled)
    assert other_seed.generated != seeded.generated


def test_stop_token_and_cancel_end_a_request(tiny_tokenizer):
    from tuneforge.infer.batching import BatchDecoder

    engine, _ = scripted_engine(tiny_tokenizer, "hi there")
    decoder = BatchDecoder(engine, max_batch=2)
    prompt = engine.encode_prompt(USER)
    done = decoder.add(prompt, None)
    dropped = decoder.add(prompt, None)
    decoder.step()
    dropped.cancelled = True
    while not decoder.idle:
        decoder.step()
    assert engine.tokenizer.decode(done.generated) == "hi there" and done.finish_reason == "stop"
    assert dropped.finish_reason == "cancelled" and len(dropped.generated) == 1


def test_slot_cache_keeps_sequences_compact():
    cache = SlotKVCache(num_layers=2, kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"),
                        slots=1, capacity=2)

    def layers(value, length):
        return [torch.full((1, 1, length, 2), float(value))] * 2

    for value, length in [(1, 3), (2, 1), (3, 5)]:
        cache.add(layers(value, length), layers(-value, length))
    assert cache.lengths == [3, 1, 5] and cache.capacity >= 6 and cache.keys[0].shape[0] >= 3  # grown
    assert cache.remove(0) == 2  # the last sequence moves into slot 0
    assert cache.lengths == [5, 1]
    assert torch.equal(cache.keys[1][0, :, :5], torch.full((1, 5, 2), 3.0))
    assert torch.equal(cache.values[0][1, :, :1], torch.full((1, 1, 2), -2.0))
    positions, mask = cache.begin_step()
    assert positions.tolist() == [5, 1] and mask.shape == (2, 1, 1, 6)
    assert mask[1, 0, 0].tolist() == [True, True, False, False, False, False]
    keys, _ = cache.write(0, torch.full((2, 1, 1, 2), 9.0), torch.zeros(2, 1, 1, 2))
    cache.end_step()
    assert cache.lengths == [6, 2] and keys[0, 0, 5].tolist() == [9.0, 9.0] and keys[1, 0, 1].tolist() == [9.0, 9.0]


def test_beam_search_and_cancelled_waiting_requests_go_through_the_batch(tiny_llama_dir):
    from tuneforge.infer.batching import BatchDecoder

    engine = _engine(tiny_llama_dir)
    prompts = _prompts(engine, 3)
    beams = engine.settings.with_overrides(num_beams=2, max_new_tokens=6)
    decoder = BatchDecoder(engine, max_batch=1)
    beam = decoder.add(prompts[0], beams)
    greedy = decoder.add(prompts[1], engine.settings.with_overrides(max_new_tokens=4))
    dropped = decoder.add(prompts[2], engine.settings.with_overrides(max_new_tokens=4))
    dropped.cancelled = True  # still waiting: it never gets a slot
    while not decoder.idle:
        decoder.step()
    assert beam.generated == engine.generate_ids(prompts[0], num_beams=2, max_new_tokens=6)
    assert greedy.generated == engine.generate_ids(prompts[1], max_new_tokens=4) and greedy.finish_reason == "length"
    assert dropped.finish_reason == "cancelled" and dropped.generated == []


@pytest.mark.parametrize("fixture_dir", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_bf16_batch_weights_prepacked_give_the_plain_copies_logits(request, fixture_dir, monkeypatch):
    """`infer_dtype: auto` batches read bf16 copies; laid out once in oneDNN's blocked format they give exactly the
    logits of the plain copies (Qwen2: with biases), for any number of sequences."""
    from tuneforge.infer import fast_step
    from tuneforge.infer.decoding import new_kv_cache
    from tuneforge.infer.fast_step import LeanDecodeStep

    engine = _engine(request.getfixturevalue(fixture_dir))
    step = LeanDecodeStep.try_create(engine.model, batch_weights_dtype=torch.bfloat16)
    packed = step._make_batch_weights()
    if packed[2] is not fast_step._packed_linear:
        pytest.skip("this torch build has no exact prepacked bf16 product")
    monkeypatch.setattr(fast_step, "_prepacking_is_exact", lambda weight_and_bias: False)
    plain = step._make_batch_weights()
    assert plain[2] is not fast_step._packed_linear
    prompts = _prompts(engine, 5)
    for count in (2, 5):
        logits = []
        for weights in (packed, plain):
            step._batch_weights = weights
            cache = step.new_slot_cache()
            for prompt in prompts[:count]:
                kv = new_kv_cache(engine.model)
                with torch.inference_mode():
                    engine.model(input_ids=torch.tensor([prompt]), **cache_argument(engine.model, kv), use_cache=True)
                assert step.prepare_cache(kv)
                cache.add([layer.keys for layer in kv.layers], [layer.values for layer in kv.layers])
            with torch.inference_mode():
                logits.append(step.step_batch(torch.arange(3, 3 + count), cache))
        assert torch.equal(logits[0], logits[1])
