"""`tuneforge api`: the official `openai` client against the server on a random port (tiny models)."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from test_infer import USER, MiniChatML, scripted_engine  # noqa: E402

from tuneforge.api import ApiService, create_app  # noqa: E402
from tuneforge.infer.batch_worker import BatchWorker  # noqa: E402
from tuneforge.infer.engine import ChatEngine  # noqa: E402


class Served:
    """A uvicorn server in a thread on a free port; `client()` is an `openai.OpenAI` for it."""

    def __init__(self, service: ApiService, api_key: str | None = None):
        self.service = service
        config = uvicorn.Config(create_app(service, api_key), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, api_key: str = "none"):
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=60)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.service.worker is not None:
            self.service.worker.close()


@pytest.fixture(scope="module")
def llama_engine(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return ChatEngine(model, tokenizer, MiniChatML(), {"do_sample": False, "max_new_tokens": 24})


@pytest.fixture(scope="module")
def served(llama_engine):
    server = Served(ApiService("tiny-llama", llama_engine, BatchWorker(llama_engine, max_batch=4)))
    yield server
    server.close()


def test_models_and_a_plain_chat_equal_the_engine(served, llama_engine):
    client = served.client()
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    reply = client.chat.completions.create(model="tiny-llama", messages=[
        {"role": "system", "content": "Be brief."}, *USER])
    expected = llama_engine.chat(USER, system="Be brief.")
    assert reply.choices[0].message.content == expected and reply.choices[0].message.role == "assistant"
    prompt = llama_engine.encode_prompt(USER, system="Be brief.")
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(llama_engine.generate_ids(prompt))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_streaming_joins_to_the_whole_answer_and_ends_with_done(served):
    client = served.client()
    whole = client.chat.completions.create(model="m", messages=USER, max_tokens=16).choices[0].message.content
    chunks = list(client.chat.completions.create(model="m", messages=USER, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16  # include_usage: a last chunk with no choices
    import httpx

    raw = httpx.post(served.url + "/chat/completions", json={"model": "m", "messages": USER, "stream": True,
                                                             "max_tokens": 3}, timeout=60).text
    assert raw.rstrip().endswith("data: [DONE]") and raw.startswith("data: {")


def test_concurrent_requests_get_their_own_answers(served, llama_engine):
    from concurrent.futures import ThreadPoolExecutor

    client = served.client()
    questions = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda m: client.chat.completions.create(model="m", messages=m, max_tokens=10,
                                                                           temperature=0), questions))
    for messages, reply in zip(questions, replies):
        ids = llama_engine.generate_ids(llama_engine.encode_prompt(messages), max_new_tokens=10)
        assert reply.choices[0].message.content == llama_engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_sampling_settings_n_seed_and_stop(served):
    client = served.client()
    kwargs = dict(model="m", messages=USER, temperature=1.3, top_p=0.9, max_tokens=12, seed=5)
    first = client.chat.completions.create(n=2, **kwargs)
    again = client.chat.completions.create(n=2, **kwargs)
    assert len(first.choices) == 2 and [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]  # seeded
    text = first.choices[0].message.content
    word = text.strip()[:2]
    stopped = client.chat.completions.create(stop=[word], n=1, **kwargs).choices[0]
    assert stopped.message.content == text[: text.index(word)] and stopped.finish_reason == "stop"


def test_tool_calls_are_parsed_back(tiny_tokenizer):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    engine, _ = scripted_engine(tiny_tokenizer, call)
    server = Served(ApiService("scripted", engine, BatchWorker(engine)))
    try:
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        reply = server.client().chat.completions.create(model="m", messages=USER, tools=tools)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert choice.message.tool_calls[0].function.name == "get_weather"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
        # the call and its result go back in as history (assistant tool_calls + a tool message)
        history = [*USER, choice.message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": "sunny"}]
        streamed = list(server.client().chat.completions.create(model="m", messages=history, tools=tools, stream=True))
        deltas = [c.choices[0].delta for c in streamed if c.choices and c.choices[0].delta.tool_calls]
        assert deltas[0].tool_calls[0].function.name == "get_weather"
        assert streamed[-1].choices[0].finish_reason == "tool_calls"
        assert engine.template.prompts[-1][-2:] == [
            {"role": "function", "content": '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'},
            {"role": "observation", "content": "sunny"}]
    finally:
        server.close()


def test_api_key(llama_engine):
    server = Served(ApiService("m", llama_engine, BatchWorker(llama_engine)), api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError, match="API key"):
            server.client("wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").chat.completions.create(model="m", messages=USER)
        assert server.client("s3cret").chat.completions.create(model="m", messages=USER, max_tokens=2).choices
    finally:
        server.close()


@pytest.mark.parametrize("request_body, message", [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role is 'wizard'; expected one of system, user"),
    ({"messages": []}, "at least one user message"),
    ({"messages": USER, "logit_bias": {"1": 5}}, "logit_bias: Extra inputs are not permitted"),
    ({"messages": USER, "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]}, "must come first"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
     "only text parts are supported"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "tokens too many"),
    ({"messages": USER, "max_tokens": 100000}, "exceed the model's context of 512 tokens by"),
    ({"messages": USER, "stream": True, "n": 2}, "`stream` with `n` > 1 is not supported yet"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice: Input should be 'auto' or 'none'"),
])
def test_bad_requests_are_400_with_a_message(served, request_body, message):
    import httpx

    response = httpx.post(served.url + "/chat/completions", json={"model": "m", **request_body}, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert "Traceback" not in response.text
    assert httpx.post(served.url + "/chat/completions", content=b"{not json", timeout=60).status_code == 400


def test_a_full_queue_answers_429(llama_engine):
    server = Served(ApiService("m", llama_engine, BatchWorker(llama_engine, max_batch=1, max_waiting=0)))
    try:
        with pytest.raises(openai.RateLimitError, match="busy"):
            server.client().chat.completions.create(model="m", messages=USER)
    finally:
        server.close()


def test_a_client_that_disconnects_mid_stream_frees_its_slot(llama_engine, monkeypatch):
    import httpx

    from tuneforge.infer.batching import BatchDecoder

    original = BatchDecoder.step
    monkeypatch.setattr(BatchDecoder, "step", lambda self: (time.sleep(0.05), original(self))[1])  # a slow model
    worker = BatchWorker(llama_engine, max_batch=2)
    server = Served(ApiService("m", llama_engine, worker))
    try:
        body = {"model": "m", "messages": USER, "stream": True, "max_tokens": 400, "temperature": 0}
        with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            while '"content": ""' in next(lines) or not worker.load[0]:  # up to the first generated text
                pass
            assert worker.load == (1, 0)
        deadline = time.time() + 10
        while worker.load != (0, 0) and time.time() < deadline:
            time.sleep(0.05)
        assert worker.load == (0, 0)  # cancelled long before its 400 tokens (20 s at this speed)
    finally:
        server.close()


def test_score_route_needs_a_reward_model(served):
    import httpx

    response = httpx.post(served.url + "/score/evaluation", json={"model": "m", "messages": ["a b"]}, timeout=60)
    assert response.status_code == 400 and "needs a reward model" in response.json()["error"]["message"]


def test_score_route_scores_each_text(tiny_tokenizer):
    import httpx

    class LengthScorer:  # stands in for RewardScorer: the score of a text is its token count
        tokenizer = tiny_tokenizer

        @staticmethod
        def score_ids(sequences):
            return [float(len(ids)) for ids in sequences]

    server = Served(ApiService("rm", scorer=LengthScorer()))
    try:
        texts = ["hello world", "a much longer text than the other one"]
        response = httpx.post(server.url + "/score/evaluation", json={"model": "rm", "messages": texts,
                                                                       "max_length": 4}, timeout=60)
        lengths = [min(4, len(tiny_tokenizer.encode(t, add_special_tokens=False))) for t in texts]
        assert response.status_code == 200 and response.json()["scores"] == lengths
        chat = httpx.post(server.url + "/chat/completions", json={"model": "rm", "messages": USER}, timeout=60)
        assert chat.status_code == 400 and "serves a reward model" in chat.text
    finally:
        server.close()


@pytest.mark.parametrize("tool_format", ["default", "qwen", "glm4", "mistral", "llama3"])
def test_function_calls_read_back_in_every_tool_format(tool_format):
    from tuneforge.data.templates.tools import extract_function_calls, format_function_calls

    one = '{"name": "get_weather", "arguments": {"city": "巴黎", "days": 2}}'
    two = '[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
    for calls in ([one] if tool_format == "glm4" else [one, two]):  # glm4 writes one call per turn
        text = format_function_calls(tool_format, calls)
        expected = [(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in
                    (json.loads(calls) if calls.startswith("[") else [json.loads(calls)])]
        assert extract_function_calls(tool_format, text) == expected
    assert extract_function_calls(tool_format, "It is sunny in Paris today.") is None


def test_api_command_line(capsys, monkeypatch):
    from tuneforge.cli.main import main

    assert main(["api", "-h"]) == 0 and "API_HOST (default 127.0.0.1)" in capsys.readouterr().out
    monkeypatch.setenv("API_PORT", "http")
    assert main(["api", "model_name_or_path=x"]) == 2
    assert "--port / API_PORT expects a whole number from 1 to 65535, got 'http'" in capsys.readouterr().err
    monkeypatch.delenv("API_PORT")
    assert main(["api", "model_name_or_path=x", "--max-batch", "0"]) == 2
    assert "--max-batch expects a whole number from 1 to 256" in capsys.readouterr().err
