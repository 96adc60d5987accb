"""End to end in a real headless browser: `tuneforge webui` in a subprocess, Debian's chromium driven by
Playwright. Pick a model and a dataset, train a few steps, watch progress and the live loss chart (an SVG
we render: `#tf-loss-raw` / `#tf-loss-smoothed` polylines with `data-points`), then
load the result in the Chat tab and get an answer streamed back. Screenshots: test-artifacts/webui/."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright_api = pytest.importorskip("playwright.sync_api")

from test_webui_args import write_data  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "webui"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`tuneforge webui` on a free loopback port, in tmp_path (its data/ and saves/)."""
    write_data(tmp_path / "data")
    port = free_port()
    env = {**os.environ, "TUNEFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    demo_dir = Path.home() / ".cache" / "tuneforge"  # the demo model is converted once per user, reuse it
    if (demo_dir / "models").is_dir():
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "models").symlink_to(demo_dir / "models")
    log = open(tmp_path / "webui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "webui", "--port", str(port)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                proc.kill()
                raise AssertionError("web UI did not start:\n" + (tmp_path / "webui.log").read_text())
            time.sleep(0.5)
    yield url, tmp_path
    proc.terminate()
    proc.wait(timeout=20)
    log.close()
    assert f"[tuneforge] web UI: {url}" in (tmp_path / "webui.log").read_text()


@pytest.fixture
def page():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tf-chromium-{os.getpid()}-{time.time_ns()}"),
            executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True, viewport={"width": 1400, "height": 1800})
        yield context.new_page()
        context.close()


def pick(page, elem_id: str, option: str) -> None:
    """Choose `option` (exact text) in a gradio dropdown."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id}").locator("input, textarea").first
    box.fill(value)
    box.press("Tab")


POLL_JS = """() => {
    const progress = document.querySelector('#tf-progress');
    const raw = document.querySelector('#tf-loss-raw');
    return [progress ? progress.dataset.status : null, raw ? Number(raw.dataset.points) : 0];
}"""


def watch_run(page, shot: str, timeout_s: float = 210.0) -> list[tuple[float, str, int]]:
    """Poll the page (status, points on #tf-loss-raw) every 0.2 s from Start until the job ends.

    The first picture is taken when the chart shows points while the job still runs.
    """
    polls, shot_taken, started = [], "", time.time()
    while time.time() - started < timeout_s:
        status, points = page.evaluate(POLL_JS)
        polls.append((round(time.time() - started, 2), status, points))
        ended = status in ("finished", "failed", "aborted")
        # best picture: a curve while training steps run; else a curve before the job ended
        if points > 0 and not ended and shot_taken != "running":
            page.screenshot(path=str(ARTIFACTS / f"{shot}_1_training.png"), full_page=True)
            shot_taken = status if status == "running" else "in progress"
        if ended:
            break
        page.wait_for_timeout(200)
    if not shot_taken:
        page.screenshot(path=str(ARTIFACTS / f"{shot}_1_training.png"), full_page=True)
    return polls


def check_live_chart(polls: list[tuple[float, str, int]], steps: int) -> None:
    """The chart was redrawn by the timer while the page stayed open (no reload): points appeared while the
    job was still in progress, only grew, and ended at one point per logged step."""
    changes = [p for i, p in enumerate(polls) if i == 0 or p[1:] != polls[i - 1][1:]]
    print(f"\n(seconds since Start, status, points on #tf-loss-raw) when they changed: {changes}")
    counts = [points for _, _, points in polls]
    assert counts == sorted(counts), f"the chart lost points while updating: {changes}"
    assert counts[-1] == steps, f"the live chart shows {counts[-1]} points at the end, expected {steps}: {changes}"
    # the page was loaded before Start (empty chart): points shown before the job ended came from timer ticks
    in_progress = [points for _, status, points in polls if status not in ("finished", "failed", "aborted")]
    assert max(in_progress, default=0) > 0, f"no loss was drawn while the job was in progress: {changes}"
    running = [(t, points) for t, status, points in polls if status == "running"]
    if running and running[-1][0] - running[0][0] >= 2.0:  # >= 2 timer ticks while training steps ran
        assert max(points for _, points in running) > 0, f"no loss drawn while the job was running: {changes}"


def run_ui_flow(page, url: str, model_path: str, dataset: str, dataset_dir: str | None, shot: str, steps: int = 4,
                model_label: str = "Custom"):
    expect = playwright_api.expect
    started = time.time()
    page.goto(url)
    expect(page.locator("#tf-loss-empty")).to_be_visible(timeout=15000)  # no job yet: the chart says so
    expect(page.locator("#tf-loss-raw")).to_have_count(0)
    fill(page, "tf-model-path", model_path)
    if dataset_dir:
        fill(page, "tf-dataset-dir", dataset_dir)
        page.wait_for_timeout(1000)  # the dataset list follows the folder
    pick(page, "tf-dataset", dataset)
    expect(page.locator("#tf-model-name input")).to_have_value(model_label, timeout=10000)
    page.locator("#tf-preview-data").click()  # rows rendered through the template, trained text marked
    expect(page.locator("#tf-data-preview mark").first).to_be_visible(timeout=60000)
    expect(page.locator("#tf-data-preview")).to_contain_text("sample 0")
    fill(page, "tf-max-steps", str(steps))
    fill(page, "tf-logging-steps", "1")
    fill(page, "tf-batch-size", "2")
    fill(page, "tf-grad-accum", "1")
    page.locator("#tf-preview-cmd").click()
    expect(page.locator("#tf-command")).to_contain_text(f"max_steps: {steps}", timeout=20000)
    page.locator("#tf-start").click()
    expect(page.locator("#tf-message")).to_contain_text("Started tuneforge train", timeout=20000)
    progress = page.locator("#tf-progress")
    polls = watch_run(page, shot)
    expect(progress).to_have_attribute("data-status", "finished", timeout=15000)
    expect(progress).to_have_attribute("data-percent", "100.0")
    expect(progress).to_have_attribute("data-step", str(steps))
    expect(progress).to_contain_text(f"step {steps}/{steps} · 100%")
    check_live_chart(polls, steps)
    # the finished chart: one point per logged step on both lines, drawn (non-empty boxes), legend shown
    for series in ("raw", "smoothed"):
        expect(page.locator(f"#tf-loss-{series}")).to_have_attribute("data-points", str(steps), timeout=15000)
        expect(page.locator(f"#tf-loss-{series}")).to_be_visible()
    expect(page.locator("#tf-loss .tf-loss-legend")).to_have_text(["raw", "smoothed"])
    expect(page.locator("#tf-loss-empty")).to_have_count(0)
    expect(page.locator("#tf-log textarea")).to_have_value(re.compile(r"\[tuneforge\] done in"), timeout=10000)
    page.screenshot(path=str(ARTIFACTS / f"{shot}_2_finished.png"), full_page=True)
    run_name = Path(progress.get_attribute("data-output-dir")).name

    page.get_by_role("tab", name="Chat").click()
    pick(page, "tf-checkpoints", run_name)
    number = page.locator("#tf-max-new-tokens input[type=number]")
    number.fill("24")
    number.press("Enter")
    page.locator("#tf-load-model").click()
    expect(page.locator("#tf-chat-status textarea")).to_have_value(re.compile(r"^Loaded: model: .*adapter: .*" + re.escape(run_name)),
                                                                 timeout=60000)
    page.locator("#tf-query textarea").fill("Who are you?")
    page.locator("#tf-send").click()
    answer = page.locator("#tf-chatbot .message.bot, #tf-chatbot [data-testid=bot]").last
    expect(answer).to_have_text(re.compile(r"\S"), timeout=60000)
    page.wait_for_timeout(1500)  # let the stream finish before the picture
    page.screenshot(path=str(ARTIFACTS / f"{shot}_3_chat.png"), full_page=True)
    text = answer.inner_text().strip()
    print(f"\n[{shot}] browser flow took {time.time() - started:.1f}s; answer: {text[:80]!r}")
    return text


def test_train_and_chat_in_the_browser(server, page, tiny_llama_dir):
    url, workspace = server
    steps = 10  # a few seconds of training here: several timer ticks while steps run
    answer = run_ui_flow(page, url, str(tiny_llama_dir), "tiny", None, "tiny", steps=steps)
    assert answer
    out = workspace / "saves" / tiny_llama_dir.name / "lora"
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "adapter_model.safetensors").is_file()
    assert (runs[0] / "tuneforge_train.yaml").read_text().count(f"max_steps: {steps}") == 1

    # a page refresh re-attaches: the finished job is still shown; Chinese labels on switch
    page.reload()
    expect = playwright_api.expect
    expect(page.locator("#tf-progress")).to_have_attribute("data-status", "finished", timeout=15000)
    expect(page.locator("#tf-loss-raw")).to_have_attribute("data-points", str(steps), timeout=15000)
    pick(page, "tf-lang", "zh")
    expect(page.locator("#tf-loss .tf-loss-legend")).to_have_text(["原始值", "平滑值"], timeout=10000)
    expect(page.locator("#tf-loss-raw")).to_have_attribute("data-points", str(steps))
    expect(page.locator("#tf-start")).to_have_text("开始", timeout=10000)
    page.screenshot(path=str(ARTIFACTS / "tiny_4_chinese.png"), full_page=True)

    # Evaluate tab (in Chinese): predict on the dataset with the trained adapter, then the scores
    page.get_by_role("tab", name="评估").click()
    fill(page, "tf-model-path", str(tiny_llama_dir))  # the reloaded page starts from the defaults
    page.wait_for_timeout(1000)  # the adapter list follows the model
    pick(page, "tf-checkpoints", runs[0].name)
    pick(page, "tf-eval-dataset", "tiny")
    fill(page, "tf-eval-max-samples", "4")
    fill(page, "tf-eval-max-new-tokens", "8")
    fill(page, "tf-eval-output-dir", "eval1")
    page.locator("#tf-eval-start").click()
    expect(page.locator("#tf-eval-message")).to_contain_text("tuneforge train", timeout=20000)
    progress = page.locator("#tf-eval-progress")
    expect(progress).to_have_attribute("data-kind", "predict", timeout=30000)
    expect(progress).to_have_attribute("data-status", "finished", timeout=120000)
    expect(progress).to_have_attribute("data-step", "4")
    results = page.locator("#tf-eval-results textarea")
    expect(results).to_have_value(re.compile(r"^BLEU-4 [\d.]+ · ROUGE-1 [\d.]+ .*（4 条"), timeout=15000)
    page.screenshot(path=str(ARTIFACTS / "tiny_5_evaluate.png"), full_page=True)
    predictions = out / "eval1" / "generated_predictions.jsonl"
    assert len(predictions.read_text(encoding="utf-8").splitlines()) == 4
    assert (out / "eval1" / "tuneforge_train.yaml").read_text().count("do_predict: true") == 1

    # recall check ("did it learn?") of the same adapter on its training data: summary + report
    page.locator("#tf-eval-mode").get_by_text("记忆检查 — 学会了吗？").click()
    expect(page.locator("#tf-recall-samples")).to_be_visible(timeout=10000)
    expect(page.locator("#tf-eval-max-new-tokens")).to_be_hidden()
    fill(page, "tf-recall-samples", "2")
    page.locator("#tf-recall-heldout input").uncheck()
    fill(page, "tf-eval-output-dir", "recall1")
    page.locator("#tf-eval-start").click()
    expect(page.locator("#tf-eval-message")).to_contain_text("tuneforge eval recall", timeout=20000)
    expect(progress).to_have_attribute("data-kind", "recall", timeout=30000)
    expect(progress).to_have_attribute("data-status", "finished", timeout=120000)
    summary = re.compile(r"^完全匹配 \d+/2 .* 留出问题 已跳过（--no-heldout） · 漂移平均变化 [\d.]+\n")
    expect(results).to_have_value(summary, timeout=15000)
    expect(page.locator("#tf-recall-report")).to_contain_text("== did it learn?", timeout=15000)
    expect(page.locator("#tf-recall-report")).to_contain_text("drift on general questions (base model before")
    page.screenshot(path=str(ARTIFACTS / "tiny_6_recall.png"), full_page=True)
    recall_results = out / "recall1" / "recall_results.json"
    assert str(recall_results) in results.input_value()
    assert (out / "recall1" / "tuneforge_recall.yaml").read_text().startswith("# tuneforge eval recall ")


@pytest.mark.demo
def test_train_and_chat_with_the_demo_model(server, page):
    url, workspace = server
    answer = run_ui_flow(page, url, "builtin:smollm2", "identity_tuneforge", str(REPO / "data"), "demo", steps=2,
                         model_label="SmolLM2-135M-Instruct (built-in demo)")
    assert answer
