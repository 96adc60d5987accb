"""The GRPO demo's evidence (issue 16): greedy held-out accuracy before and after `examples/demo_grpo.yaml`, the
reward curve (first 10 vs last 10 steps), generation and training tokens/s, wall time.

    python bench/bench_grpo_demo.py                      # before -> train (~18 min on 2 cores) -> after
    python bench/bench_grpo_demo.py --skip-train         # evaluate an existing output_dir only

Answers come from tuneforge's batched decoder (greedy, the config's max_new_tokens, float32), scored by the same
`accuracy` reward the training used; the held-out problems never appear in the training file
(data/make_arithmetic.py). Writes bench/results/grpo_demo.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def heldout_accuracy(config: Path, adapter: Path | None, heldout: Path) -> dict:
    from tuneforge.config.parser import load_config_dict, read_config_file
    from tuneforge.infer.engine import ChatEngine
    from tuneforge.train.rewards import accuracy_reward

    values = read_config_file(config)  # the model, template and completion budget of the training config
    chat = {k: values[k] for k in ("model_name_or_path", "template", "default_system", "max_new_tokens") if k in values}
    chat.update(do_sample=False, infer_dtype="float32")
    if adapter is not None:
        chat.update(adapter_name_or_path=str(adapter), finetuning_type="lora")
    cfg = load_config_dict(chat, source=str(config), config_path=config, require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    rows = json.loads(heldout.read_text(encoding="utf-8"))
    started = time.time()
    answers = engine.chat_batch([{"messages": [{"role": "user", "content": r["instruction"]}]} for r in rows],
                                max_batch=16)
    scores = accuracy_reward(None, answers, [r["output"] for r in rows])
    chinese = [bool(re.search(r"[\u4e00-\u9fff]", r["instruction"])) for r in rows]
    by_lang = {lang: [s for s, zh in zip(scores, chinese) if zh == (lang == "zh")] for lang in ("en", "zh")}
    return {"accuracy": sum(scores) / len(scores), **{lang: sum(v) / max(len(v), 1) for lang, v in by_lang.items()},
            "seconds": round(time.time() - started, 1), "samples": [(rows[i]["output"], answers[i][:120]) for i in range(4)]}


def curve(output_dir: Path) -> dict:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "reward" in r]
    mean = lambda values: sum(values) / max(len(values), 1)  # noqa: E731
    rewards = [r["reward"] for r in steps]
    return {"steps": len(steps), "rewards": rewards, "first10": mean(rewards[:10]), "last10": mean(rewards[-10:]),
            "completion_length_first10": mean([r["completion_length"] for r in steps[:10]]),
            "completion_length_last10": mean([r["completion_length"] for r in steps[-10:]]),
            "gen_tokens_per_s": mean([r["gen_tokens_per_s"] for r in steps]),
            "train_tokens_per_s": mean([r["train_tokens_per_s"] for r in steps if "train_tokens_per_s" in r])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "demo_grpo.yaml")
    parser.add_argument("--heldout", type=Path, default=REPO / "data" / "arithmetic_heldout.json")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "grpo_demo.json")
    args = parser.parse_args()
    from tuneforge.config.parser import read_config_file

    output_dir = REPO / read_config_file(args.config)["output_dir"]
    result: dict = {"config": str(args.config)}
    result["before"] = heldout_accuracy(args.config, None, args.heldout)
    print(f"held-out accuracy before: {result['before']['accuracy']:.1%}", flush=True)
    if not args.skip_train:
        started = time.time()
        subprocess.run([sys.executable, "-m", "tuneforge", "train", str(args.config)], check=True, cwd=REPO)
        result["train_wall_seconds"] = round(time.time() - started, 1)
    result["after"] = heldout_accuracy(args.config, output_dir, args.heldout)
    result["curve"] = curve(output_dir)
    c = result["curve"]
    print(f"\nGRPO demo ({args.config.name}): {c['steps']} steps"
          + (f", {result['train_wall_seconds']:.0f} s of training" if "train_wall_seconds" in result else ""))
    print(f"  mean accuracy reward, first 10 steps {c['first10']:.3f} -> last 10 steps {c['last10']:.3f}")
    print(f"  completion length (tokens), first 10 {c['completion_length_first10']:.1f} -> last 10 "
          f"{c['completion_length_last10']:.1f}")
    print(f"  generation {c['gen_tokens_per_s']:.0f} tokens/s, training {c['train_tokens_per_s']:.0f} tokens/s")
    for key in ("before", "after"):
        r = result[key]
        print(f"  held-out greedy accuracy {key}: {r['accuracy']:.1%} (en {r['en']:.1%}, zh {r['zh']:.1%})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
