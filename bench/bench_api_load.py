"""Load test of `tuneforge api` on the built-in demo model: N concurrent clients for a bounded time.

    .venv/bin/python bench/bench_api_load.py                       # 8 then 32 clients, 60 s each
    .venv/bin/python bench/bench_api_load.py --clients 8 --seconds 30 --max-tokens 64

The server runs in this process (uvicorn in a thread, the demo model, `--max-batch` sequences decoded together,
`--max-waiting` queued), or with `--server-process` as its own process, the way it is deployed: `tuneforge api
--model_name_or_path builtin:smollm2` on a free port (the client threads then do not share the server's
interpreter lock); each client thread sends chat requests back to back (a different question each time,
`max_tokens` new tokens, temperature 0) until the time is up, then finishes its request. Prints requests/s,
generated tokens/s, p50/p95 latency and errors (any non-200 answer or exception) per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch_decode import QUESTIONS  # noqa: E402


def serve(max_batch: int, max_waiting: int):
    import uvicorn

    from tuneforge.api import ApiService, create_app
    from tuneforge.config import load_config
    from tuneforge.infer.batch_worker import BatchWorker
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config(None, ["model_name_or_path=builtin:smollm2"], require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    service = ApiService("smollm2", engine, BatchWorker(engine, max_batch=max_batch, max_waiting=max_waiting))
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"


def serve_process(max_batch: int, max_waiting: int):
    """`tuneforge api` as its own process on a free port; (the process, the base URL) once it answers."""
    import subprocess

    import httpx

    from tuneforge.utils.distributed import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tuneforge", "api", "model_name_or_path=builtin:smollm2",
                               "--port", str(port), "--max-batch", str(max_batch), "--max-waiting", str(max_waiting)])
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        if server.poll() is not None:
            raise SystemExit(f"tuneforge api exited with {server.returncode}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("tuneforge api did not answer within 120 s")


def run_load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    latencies, tokens, errors = [], [], []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        with httpx.Client(timeout=600) as http:
            n = 0
            while time.perf_counter() < deadline:
                question = f"{QUESTIONS[(index + n) % len(QUESTIONS)]} (client {index}, request {n})"
                started = time.perf_counter()
                try:
                    response = http.post(url + "/chat/completions", json={
                        "model": "smollm2", "messages": [{"role": "user", "content": question}],
                        "max_tokens": max_tokens, "temperature": 0})
                    ok = response.status_code == 200
                    with lock:
                        if ok:
                            latencies.append(time.perf_counter() - started)
                            tokens.append(response.json()["usage"]["completion_tokens"])
                        else:
                            errors.append(f"{response.status_code}: {response.text[:200]}")
                except Exception as err:  # noqa: BLE001 -- every failure is counted and shown
                    with lock:
                        errors.append(repr(err))
                n += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "requests_per_s": round(len(latencies) / wall, 2),
            "tokens_per_s": round(sum(tokens) / wall, 1),
            "p50_s": round(statistics.median(ordered), 2) if ordered else None,
            "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2) if ordered else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-waiting", type=int, default=64)
    parser.add_argument("--server-process", action="store_true", help="run `tuneforge api` as its own process")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    server, url = (serve_process if args.server_process else serve)(args.max_batch, args.max_waiting)
    results = []
    for clients in args.clients:
        result = run_load(url, clients, args.seconds, args.max_tokens)
        results.append(result)
        print(f"{clients:>3} clients, {result['seconds']}s: {result['requests']} requests "
              f"({result['requests_per_s']}/s), {result['tokens_per_s']} tokens/s, p50 {result['p50_s']}s, "
              f"p95 {result['p95_s']}s, errors {result['errors']} {result['error_samples'] or ''}", flush=True)
    if args.server_process:
        server.terminate()
        server.wait(timeout=30)
    else:
        server.should_exit = True
    if args.out:
        Path(args.out).write_text(json.dumps({"max_batch": args.max_batch, "max_tokens": args.max_tokens,
                                              "server_process": args.server_process, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
