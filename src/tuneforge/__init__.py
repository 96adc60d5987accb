"""tuneforge: fine-tune open LLMs from LLaMA-Factory-compatible configs, faster and leaner."""

__version__ = "0.1.0"
