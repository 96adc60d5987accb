"""Test helper: collect one logger's messages directly (works whatever the app did to propagation)."""

from __future__ import annotations

import logging


class LogRecords(logging.Handler):
    def __init__(self, logger_name: str):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.logger = logging.getLogger(logger_name)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
