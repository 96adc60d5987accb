"""`tuneforge data check`: the run's own tokenizer and template, then the report of data/check.py."""

from __future__ import annotations


def check_data(cfg):
    """A `CheckReport` on the rows `cfg` trains on (see tuneforge.data.check)."""
    import time

    from tuneforge.data.check import run_check, training_specs
    from tuneforge.train.workflow import load_tokenizer_and_template

    training_specs(cfg)  # a wrong dataset name fails before the tokenizer loads
    start = time.perf_counter()
    tokenizer, template = load_tokenizer_and_template(cfg)  # pt: no template
    loaded = time.perf_counter()
    report = run_check(cfg, tokenizer, template)
    report.load_seconds = loaded - start
    return report
