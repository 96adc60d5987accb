"""Datasets -> token ids: registry, loaders, format converters, encoders, report, pipeline.

Submodules are imported where used (``from tuneforge.data.pipeline import build_datasets``) so that
importing one piece does not pull in `datasets` or the templates.
"""
