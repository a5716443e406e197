"""``kiwipy.rmq.defaults``: kiwiPy's default names and times, for code that reads them.

The kiwiPy face does not use these: kiwitrio's defaults apply (exchanges ``kiwitrio.messages``
and ``kiwitrio.tasks``, CBOR encoding...); pass these values explicitly to use kiwiPy's names.
``ENCODER``/``DECODER`` are kiwiPy's YAML pair and need PyYAML (imported when first used).
"""

from __future__ import annotations

import importlib
from typing import Any

SECONDS_TO_MILLISECONDS = 1000

TASK_EXCHANGE = "kiwipy.tasks"
TASK_QUEUE = "kiwipy.tasks"
MESSAGE_EXCHANGE = "kiwipy.messages"
BROADCAST_TOPIC = "[broadcast]"
RPC_TOPIC = "[rpc]"
MESSAGE_TTL = 66 * SECONDS_TO_MILLISECONDS
TEST_QUEUE_EXPIRES = 10 * SECONDS_TO_MILLISECONDS
QUEUE_EXPIRES = 60 * SECONDS_TO_MILLISECONDS
REPLY_QUEUE_EXPIRES = 60 * SECONDS_TO_MILLISECONDS
TASK_MESSAGE_TTL = 7 * 24 * 60 * 60 * SECONDS_TO_MILLISECONDS
TASK_PREFETCH_SIZE = 0
TASK_PREFETCH_COUNT = 0
TASK_FETCH_TIMEOUT = 5.0


def ENCODER(value: Any) -> bytes:  # kiwiPy's name
    """YAML, as kiwiPy encodes (needs PyYAML)."""
    yaml = importlib.import_module("yaml")
    encoded: bytes = yaml.dump(value, encoding="utf-8")
    return encoded


def DECODER(data: bytes | str) -> Any:  # kiwiPy's name
    """YAML, as kiwiPy decodes (needs PyYAML; it loads Python objects too: trusted peers
    only)."""
    yaml = importlib.import_module("yaml")
    return yaml.load(data, Loader=yaml.FullLoader)
