"""Stage ppo: reward sources, the rollout/update loop on a tiny model, and the recipe end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError, ModelError
from tuneforge.train.reward_sources import ApiReward, FunctionReward, build_reward_source

PROMPTS = ["Hello, who are you?", "The quick brown fox", "Alice scored 91 points", "def add(a, b):",
           "Translate the following sentence", "system user assistant", "你好", "tool call result"]
TARGET_IDS = set(range(100, 200))  # the toy reward: share of response tokens with an id in this set


def ppo_config(model_dir, out_dir, **extra):
    values = {
        "model_name_or_path": str(model_dir), "stage": "ppo", "do_train": True, "finetuning_type": "full",
        "dataset": "toy", "output_dir": str(out_dir), "overwrite_output_dir": True, "report_to": "none",
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "ppo_buffer_size": 4, "ppo_epochs": 4,
        "learning_rate": 1e-2, "lr_scheduler_type": "constant", "max_steps": 8, "logging_steps": 1,
        "max_new_tokens": 2, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "seed": 0, "save_strategy": "no",
    }
    values.update(extra)
    return load_config_dict(values)


def toy_reward(prompt, response):
    return sum(t in TARGET_IDS for t in response) / len(response)


# ---- api reward source --------------------------------------------------------------------
class _ScoreServer:
    """A reward server on 127.0.0.1 that records requests; stops itself after `max_requests` or 20 s."""

    def __init__(self, status=200, answer=None, max_requests=1):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "content_type": self.headers["Content-Type"], "body": body})
                payload = answer if answer is not None else {"scores": [float(len(m)) for m in body["messages"]]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 20
        self.url = f"http://127.0.0.1:{self.server.server_port}/score"
        self.thread = threading.Thread(target=lambda: [self.server.handle_request() for _ in range(max_requests)],
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(timeout=20)
        self.server.server_close()


def test_api_reward_posts_llamafactory_request_shape(tiny_tokenizer):
    prompts = [tiny_tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"),
               tiny_tokenizer.encode("fox")]
    responses = [tiny_tokenizer.encode("I am an AI<|im_end|>"), tiny_tokenizer.encode(" dog")]
    with _ScoreServer() as server:
        scores = ApiReward(server.url, tiny_tokenizer).score(prompts, responses)
    texts = ["<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nI am an AI<|im_end|>", "fox dog"]
    assert server.requests == [{"path": "/score", "content_type": "application/json",
                                "body": {"model": "model", "messages": texts}}]
    assert scores.dtype == torch.float32
    assert scores.tolist() == [float(len(texts[0])), 7.0]


@pytest.mark.parametrize(
    "status, answer, message",
    [(500, {"error": "boom"}, "answered HTTP 500"),
     (200, {"rewards": [1.0]}, "expected JSON {\"scores\": [number, ...]}"),
     (200, {"scores": [1.0, 2.0]}, "returned 2 scores for 1 rollouts")],
)
def test_api_reward_errors_name_the_url(tiny_tokenizer, status, answer, message):
    with _ScoreServer(status=status, answer=answer) as server:
        with pytest.raises(ModelError) as err:
            ApiReward(server.url, tiny_tokenizer).score([[5]], [[6]])
    assert server.url in str(err.value) and message in str(err.value)


def test_api_reward_unreachable_server(tiny_tokenizer):
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{server.server_port}/score"
    server.server_close()  # nothing listens there any more
    with pytest.raises(ModelError, match=r"reward_model \(api\) http://127\.0\.0\.1:\d+/score could not be reached"):
        ApiReward(url, tiny_tokenizer, timeout=5).score([[5]], [[6]])


def test_reward_config_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="stage ppo needs `reward_model`"):
        build_reward_source(ppo_config(tiny_llama_dir, tmp_path), None, None)
    cfg = ppo_config(tiny_llama_dir, tmp_path, reward_model="saves/rm", reward_model_type="api")
    with pytest.raises(ConfigError, match="`saves/rm` is not an http"):
        build_reward_source(cfg, None, None)
    adapter = tmp_path / "rm_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    cfg = ppo_config(tiny_llama_dir, tmp_path, reward_model=str(adapter), reward_model_type="full")
    with pytest.raises(ConfigError, match="is a LoRA adapter; set `reward_model_type: lora`"):
        build_reward_source(cfg, None, None)


# ---- the loop on a tiny model ------------------------------------------------------------
def _encoded_prompts(cfg):
    from tuneforge.train import workflow

    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    prompts = [template.encode_prompt(tokenizer, [{"role": "user", "content": text}]) for text in PROMPTS]
    return tokenizer, template, prompts


def test_ppo_loop_raises_mean_toy_reward(tiny_llama_dir, tmp_path):
    from tuneforge.model.value_head import load_value_head_model
    from tuneforge.train.ppo import PPOLoop, load_reference

    cfg = ppo_config(tiny_llama_dir, tmp_path / "out")
    tokenizer, template, prompts = _encoded_prompts(cfg)
    torch.manual_seed(0)
    policy = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=True)
    reference = load_reference(cfg, None)  # full fine-tuning: a frozen copy
    loop = PPOLoop(cfg, policy, reference, FunctionReward(toy_reward), tokenizer,
                   stop_ids=template.stop_token_ids(tokenizer))
    metrics = loop.train(prompts * 4)  # 32 rollouts per step
    rewards = metrics["rewards"]
    assert len(rewards) == 8
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    records = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in records] == list(range(1, 9))
    assert [r["reward"] for r in records] == pytest.approx(rewards, abs=1e-6)
    for key in ("loss", "kl", "kl_coef", "policy_loss", "value_loss", "entropy", "clipfrac", "lr", "throughput"):
        assert key in records[-1], key
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before the first update
    assert records[-1]["kl"] > 0
    assert json.loads((tmp_path / "out" / "running_status.json").read_text())["status"] == "finished"


# ---- the recipe end to end: LoRA policy, LoRA reward adapter ------------------------------------
def _make_rm_adapter(model_dir, folder):
    """A reward adapter as `stage: rm` saves it: LoRA adapter + value_head.safetensors (random weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.model.value_head import ValueHeadModel

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rm = ValueHeadModel(model)
    torch.nn.init.normal_(rm.v_head.weight, std=0.5)
    rm.save_pretrained(str(folder))
    return rm.eval()


def test_run_ppo_lora_with_reward_adapter(tiny_llama_dir, tmp_path, monkeypatch):
    from tuneforge.train.ppo import run_ppo
    from tuneforge.train.reward_sources import LoraAdapterReward

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"instruction": text, "input": "", "output": "ok"} for text in PROMPTS]
    (data / "toy.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
    rm = _make_rm_adapter(tiny_llama_dir, tmp_path / "rm")
    out = tmp_path / "out"
    cfg = ppo_config(tiny_llama_dir, out, finetuning_type="lora", dataset_dir=str(data), reward_model=str(tmp_path / "rm"),
                     reward_model_type="lora", per_device_train_batch_size=4, ppo_buffer_size=1, ppo_epochs=1,
                     max_steps=2, learning_rate=1e-3, max_new_tokens=4, logging_steps=1)

    built = {}
    original_init = LoraAdapterReward.__init__

    def spy_init(self, policy, path):
        original_init(self, policy, path)
        built["source"], built["policy"] = self, policy

    monkeypatch.setattr(LoraAdapterReward, "__init__", spy_init)
    metrics = run_ppo(cfg)

    assert metrics["steps"] == 2
    assert (out / "adapter_model.safetensors").is_file() and (out / "value_head.safetensors").is_file()
    assert not (out / "reward").exists()  # the reward adapter is not saved with the policy
    assert not (out / ".tuneforge-saving").exists()
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 8  # the policy's adapter (lora_rank default), not the reward adapter (r=4)
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["kl"] == pytest.approx(0.0, abs=1e-5)

    # the reward adapter scores exactly like base + reward adapter + its head, and leaves the policy trainable
    source, policy = built["source"], built["policy"]
    prompt, response = [[1, 50, 60, 70]], [[80, 90, 2]]
    with torch.no_grad():
        expected = rm(torch.tensor([prompt[0] + response[0]]))[0, -1]
    torch.testing.assert_close(source.score(prompt, response)[0], expected, atol=1e-5, rtol=0)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any(".default." in n for n in trainable) and not any(".reward." in n for n in trainable)


def test_ppo_config_checked_before_loading(tiny_llama_dir, tmp_path):
    from tuneforge.errors import NotSupportedError
    from tuneforge.train.ppo import check_ppo_config

    with pytest.raises(ConfigError, match="stage ppo needs `reward_model`"):
        check_ppo_config(ppo_config(tiny_llama_dir, tmp_path))
    # the rest is config validation: refused when the config loads (CLI, web UI, data check alike)
    with pytest.raises(ConfigError, match="`num_beams: 2`; PPO samples its rollouts"):
        ppo_config(tiny_llama_dir, tmp_path, reward_model="rm", num_beams=2)
    with pytest.raises(NotSupportedError, match="evaluation during PPO is not supported"):
        ppo_config(tiny_llama_dir, tmp_path, reward_model="rm", val_size=0.1)
    with pytest.raises(NotSupportedError, match="`compute_accuracy`: PPO has no evaluation"):
        ppo_config(tiny_llama_dir, tmp_path, reward_model="rm", compute_accuracy=True)
    with pytest.raises(ConfigError, match="`ref_model_quantization_bit` must be 4 or 8, got 3"):
        ppo_config(tiny_llama_dir, tmp_path, reward_model="rm", ref_model_quantization_bit=3)
    check_ppo_config(ppo_config(tiny_llama_dir, tmp_path, reward_model="rm"))  # fine


# ---- training keys the loop honours: loraplus_lr_ratio, report_to, neftune_noise_alpha, thread policy ------
def _small_loop(cfg):
    from tuneforge.model.value_head import load_value_head_model
    from tuneforge.train.ppo import PPOLoop, load_reference

    tokenizer, template, prompts = _encoded_prompts(cfg)
    torch.manual_seed(0)
    policy = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=True)
    loop = PPOLoop(cfg, policy, load_reference(cfg, None), FunctionReward(toy_reward), tokenizer,
                   stop_ids=template.stop_token_ids(tokenizer))
    return loop, prompts[:4]


def _small_config(model_dir, out_dir, **extra):
    return ppo_config(model_dir, out_dir, **{"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                                             "ppo_buffer_size": 1, "ppo_epochs": 1, "max_steps": 1, **extra})


def test_ppo_optimizer_uses_loraplus_groups(tiny_llama_dir, tmp_path):
    cfg = _small_config(tiny_llama_dir, tmp_path / "out", finetuning_type="lora", loraplus_lr_ratio=16.0)
    loop, prompts = _small_loop(cfg)
    loop.train(prompts)
    lr_of = {id(p): g["lr"] for g in loop.callbacks.optimizer.param_groups for p in g["params"]}
    named = {n: p for n, p in loop.policy.named_parameters() if p.requires_grad}
    assert {lr_of[id(p)] for n, p in named.items() if "lora_B" in n} == {1e-2 * 16}
    assert {lr_of[id(p)] for n, p in named.items() if "lora_A" in n} == {1e-2}
    assert lr_of[id(named["v_head.weight"])] == 1e-2 and lr_of[id(named["v_head.bias"])] == 1e-2 * 16
    assert len(lr_of) == len(named)


def test_ppo_reports_to_the_report_to_integrations(tiny_llama_dir, tmp_path, monkeypatch):
    import transformers.integrations
    from transformers import TrainerCallback

    events = []

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            events.append(("begin", type(model).__name__))

        def on_log(self, args, state, control, logs=None, **kwargs):
            events.append(("log", state.global_step, sorted(logs)))

        def on_train_end(self, args, state, control, **kwargs):
            events.append(("end", state.global_step))

    asked = []
    monkeypatch.setattr(transformers.integrations, "get_reporting_integration_callbacks",
                        lambda report_to: asked.append(list(report_to)) or [Recorder])
    cfg = _small_config(tiny_llama_dir, tmp_path / "out", report_to="tensorboard", max_steps=2)
    loop, prompts = _small_loop(cfg)
    loop.train(prompts)
    assert asked == [["tensorboard"]]
    assert [e[0] for e in events] == ["begin", "log", "log", "end"] and events[0][1] == "ValueHeadModel"
    assert [e[1] for e in events[1:]] == [1, 2, 2]
    assert {"reward", "kl", "policy_loss", "value_loss", "learning_rate"} <= set(events[1][2])


def test_neftune_noise_magnitude_per_packed_sequence(tiny_llama_dir):
    from tuneforge.model.value_head import ValueHeadModel
    from tuneforge.train.ppo_batch import PackedResponses, neftune_noise
    from transformers import AutoModelForCausalLM

    policy = ValueHeadModel(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    batch = PackedResponses.build([[5, 6], [7, 8, 9, 10]], [[11], [12, 13, 14]], "cpu")  # lengths 3 and 7
    embed = policy.pretrained_model.get_input_embeddings()
    clean = embed(batch.input_ids)
    torch.manual_seed(0)
    with neftune_noise(policy, 5.0, batch):
        noisy = embed(batch.input_ids)
    assert torch.equal(embed(batch.input_ids), clean)  # the noise ends with the block
    with neftune_noise(policy, None, batch):
        assert torch.equal(embed(batch.input_ids), clean)
    noise = (noisy - clean)[0].abs()  # [T, H]; hidden size 32
    bounds = torch.tensor([5.0 / (3 * 32) ** 0.5] * 3 + [5.0 / (7 * 32) ** 0.5] * 7)
    assert (noise.amax(dim=1) <= bounds + 1e-6).all()
    assert (noise.amax(dim=1) > 0.8 * bounds).all()  # uniform in [-m, m]: 32 draws come close to m


def test_ppo_update_forwards_get_neftune_noise(tiny_llama_dir, tmp_path, monkeypatch):
    from tuneforge.train import ppo

    seen = []
    real = ppo.neftune_noise

    def spy(model, alpha, batch):
        seen.append((alpha, model.training))
        return real(model, alpha, batch)

    monkeypatch.setattr(ppo, "neftune_noise", spy)
    loop, prompts = _small_loop(_small_config(tiny_llama_dir, tmp_path / "out", neftune_noise_alpha=5.0))
    loop.train(prompts)
    assert seen == [(5.0, True)] * 2  # the update's two mini-batches, in training mode; rollouts never


def test_ppo_loop_follows_the_thread_policy(tiny_llama_dir, tmp_path, monkeypatch):
    from tuneforge.train.threads import ThreadPolicy

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    clock = {"t": 0.0}

    def sample():  # another process keeps one of the two cores busy
        clock["t"] += 1.0
        return 2.0 * clock["t"], clock["t"], clock["t"]

    threads = {"n": 2}
    calls = []

    def set_threads(n):
        calls.append(n)
        threads["n"] = n

    loop, prompts = _small_loop(_small_config(tiny_llama_dir, tmp_path / "out"))
    loop.threads = ThreadPolicy(every_seconds=0.5, sample=sample, set_threads=set_threads,
                                get_threads=lambda: threads["n"])
    loop.train(prompts)
    assert calls == [1, 2]  # one thread while the other process is busy, restored at the end


def test_a_full_reward_model_loads_with_reward_model_quantization_bit(tiny_llama_dir, tmp_path, monkeypatch):
    """LF's create_reward_model: the reward model's own bits (the policy's do not carry over)."""
    import tuneforge.model.value_head as value_head

    seen = {}
    monkeypatch.setattr(value_head, "load_value_head_model",
                        lambda model_args, *args, **kwargs: seen.setdefault("args", model_args))
    for bits in (None, 8):
        seen.clear()
        cfg = ppo_config(tiny_llama_dir, tmp_path, reward_model=str(tiny_llama_dir), reward_model_type="full",
                         **({"reward_model_quantization_bit": bits} if bits else {}))
        build_reward_source(cfg, None, None)
        assert seen["args"].quantization_bit == bits and seen["args"].model_name_or_path == str(tiny_llama_dir)
