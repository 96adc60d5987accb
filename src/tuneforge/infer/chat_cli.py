"""Terminal chat: ``tuneforge chat config.yaml`` (interactive) or ``--prompt "..."`` (answer once).

Interactive commands: ``clear`` forgets the conversation, ``exit`` (or Ctrl-D / Ctrl-C) quits.
The answer streams to ``stream``; speed goes to stderr so ``--prompt`` output is just the answer.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO

_HELP = "Type your message. 'clear' forgets the conversation, 'exit' quits."


def run_chat(cfg, prompt: str | None = None, stream: TextIO | None = None, input_fn: Callable[[str], str] = input,
             *, engine=None, err: TextIO | None = None, images: list[str] | tuple = ()) -> int:
    """Chat in the terminal; returns the process exit code.

    ``engine`` lets a caller (or a test) pass a ready ``ChatEngine``; otherwise one is built from
    ``cfg``. With ``prompt`` the single answer is written to ``stream`` and nothing else is. ``images``: what
    the conversation is about (a vision-language model), sent with every turn.
    """
    stream = stream if stream is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if engine is None:
        from tuneforge.infer.engine import ChatEngine

        engine = ChatEngine.from_config(cfg)

    if prompt is not None:
        _answer(engine, [{"role": "user", "content": prompt}], stream, err, images)
        return 0

    stream.write(f"{engine.description}\n{_HELP}\n")
    stream.flush()
    history: list[dict[str, str]] = []
    while True:
        try:
            query = input_fn("\nUser: ")
        except UnicodeDecodeError:
            err.write("Could not decode the input as UTF-8; set your terminal locale to UTF-8 (e.g. LANG=C.UTF-8).\n")
            continue
        except (EOFError, KeyboardInterrupt):
            stream.write("\n")
            return 0
        command = query.strip()
        if command == "exit":
            return 0
        if command == "clear":
            history = []
            stream.write("History has been removed.\n")
            continue
        if not command:
            continue
        messages = history + [{"role": "user", "content": query}]
        stream.write("Assistant: ")
        try:
            response = _answer(engine, messages, stream, err, images)
        except KeyboardInterrupt:  # stop this answer, keep the session
            stream.write("\n[interrupted]\n")
            continue
        history = messages + [{"role": "assistant", "content": response}]


def _answer(engine, messages: list[dict[str, str]], stream: TextIO, err: TextIO, images=()) -> str:
    parts = []
    for delta in engine.stream_chat(messages, images=images) if images else engine.stream_chat(messages):
        parts.append(delta)
        stream.write(delta)
        stream.flush()
    stream.write("\n")
    stream.flush()
    if engine.last_stats is not None:
        err.write(f"[{engine.last_stats}]\n")
        err.flush()
    return "".join(parts)


def run_reward_chat(cfg, prompt: str | None = None, answer: str | None = None, stream: TextIO | None = None,
                    input_fn: Callable[[str], str] = input, *, scorer=None) -> int:
    """`tuneforge chat` on a reward model: score (prompt, answer) pairs instead of generating.

    With ``prompt`` and ``answer`` the score alone is printed; otherwise each turn asks for a user
    message and a candidate answer and prints its score. ``exit`` (or Ctrl-D) quits.
    """
    stream = stream if stream is not None else sys.stdout
    if scorer is None:
        from tuneforge.infer.reward import RewardScorer

        scorer = RewardScorer.from_config(cfg)

    def score(query: str, response: str) -> float:
        return scorer.score([{"role": "user", "content": query}, {"role": "assistant", "content": response}])

    if prompt is not None or answer is not None:
        if prompt is None or answer is None:
            from tuneforge.errors import ConfigError

            raise ConfigError("a reward model scores an answer: pass both --prompt TEXT and --answer TEXT")
        stream.write(f"{score(prompt, answer):.4f}\n")
        return 0
    stream.write("This is a reward model: type a user message, then a candidate answer, to see its score. "
                 "'exit' quits.\n")
    while True:
        try:
            query = input_fn("\nUser: ")
            if query.strip() == "exit":
                return 0
            response = input_fn("Answer to score: ")
        except (EOFError, KeyboardInterrupt):
            stream.write("\n")
            return 0
        if response.strip() == "exit":
            return 0
        stream.write(f"score: {score(query, response):.4f}\n")
