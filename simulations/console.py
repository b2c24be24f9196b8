"""One console line per event in the Flower apps: no duplicates, no library noise.

Every line used to print twice: the ``flwr`` logger has its own console handler and also
propagates to the root logger, which Opacus' import fills with ``logging.basicConfig`` (its
handler also printed Flower's DEBUG lines). Here the ``flwr`` and ``fl_ext`` loggers print
through Flower's handlers only, and lines that tell a user nothing are dropped.
"""

from __future__ import annotations

import logging
import re
import warnings

# Flower and MLflow lines that are true but useless in an fl-ext run.
NOISE = (
    # every simulated ClientApp actor says so when the run ends normally
    re.compile(r"^Manually terminating ClientAppActor"),
    # printed before the app runs, whatever the federation's size
    re.compile(r"^Since flwr 1\.32, default simulated SuperNodes changed from 10 to 2"),
)


class DropNoise(logging.Filter):
    """Drops the records whose message matches one of :data:`NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in NOISE)


def is_noise(line: str) -> bool:
    """Whether a streamed console line (Flower's ``LEVEL : message`` form) is noise."""
    message = re.sub(r"^(?:\x1b\[[0-9;]*m)?(?:\([^)]*\)\s*)?", "", line.strip())
    message = re.sub(r"^(?:\x1b\[[0-9;]*m)?\w+\s*(?:\x1b\[[0-9;]*m)?\s*:\s*", "", message)
    return any(pattern.search(message) for pattern in NOISE)


def configure_console() -> None:
    """Route ``fl_ext`` to Flower's handlers, stop both propagating to root, drop noise.

    Idempotent: safe to call from every ServerApp/ClientApp entry point.
    """
    flower, ours = logging.getLogger("flwr"), logging.getLogger("fl_ext")
    flower.propagate = False
    if not any(isinstance(f, DropNoise) for f in flower.filters):
        flower.addFilter(DropNoise())
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for handler in flower.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    # MLflow 3.17's sqlite store triggers it on every start (SQLAlchemy 2.x deprecation)
    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
