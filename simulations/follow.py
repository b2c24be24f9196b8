"""Read a streamed ``flwr run`` log as a user would: noise out, tracebacks folded, one reason.

``flwr run --stream`` prints every line of the ServerApp and of Flower's runtime; a failed
run ends in one or more tracebacks (the ServerApp's, then the runtime's copy of it). A
:class:`Follower` prints the lines that help, folds each traceback to nothing unless
``verbose``, and keeps the one-line reason of a failure: the ServerApp's own
``Configuration error: ...`` line, else the last exception line of a traceback, else the last
ERROR line.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from simulations.console import is_noise

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^(?:\([^)]*\)\s*)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*(.*)$")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exhausted|Exceeded)):\s*(.+)$")
# what a sweep shows of each job: its progress and how it ended
PROGRESS = re.compile(r"^(Round \d+/\d+:|Finished:|Training stopped|WARNING|Configuration error)")
_TRACEBACK_CONTINUES = (
    "Traceback (most recent call last):",
    "During handling of the above exception",
    "The above exception was the direct cause",
)


def plain(line: str) -> str:
    """``line`` without colour codes and trailing newline."""
    return _ANSI.sub("", line).rstrip("\n")


class Follower:
    """Call with each streamed line; ``reason`` is the failure's one line (or None)."""

    def __init__(
        self,
        *,
        verbose: bool = False,
        write: Callable[[str], None] = print,
        prefix: str = "",
        only: re.Pattern[str] | None = None,
    ) -> None:
        self.verbose, self.write, self.prefix, self.only = verbose, write, prefix, only
        self.in_traceback = False
        self.config_error: str | None = None
        self.exception: str | None = None
        self.error: str | None = None
        self.hidden = 0  # traceback lines folded away

    def __call__(self, line: str) -> None:
        text = plain(line)
        level = _LEVEL.match(text.strip())
        message = level.group(2) if level else text
        if self._traceback_line(text, message, level is not None):
            if self.verbose:
                self.write(self.prefix + text)
            else:
                self.hidden += 1
            return
        if is_noise(text) or (level is not None and level.group(1) == "DEBUG"):
            return
        important = level is not None and level.group(1) in ("ERROR", "CRITICAL")
        if important:
            self._note_error(message)
        if self.only is None or important or self.only.search(message):
            self.write(self.prefix + text)

    def _traceback_line(self, text: str, message: str, is_log_line: bool) -> bool:
        if message.startswith(_TRACEBACK_CONTINUES):
            self.in_traceback = True
            return True
        if not self.in_traceback:
            return False
        exception = _EXCEPTION.match(text.strip())
        if exception:
            self.exception = f"{exception.group(1).rsplit('.', 1)[-1]}: {exception.group(2)}"
            return True
        if not is_log_line and (text.startswith((" ", "\t")) or not text.strip()):
            return True  # a frame, a code line, a caret line
        self.in_traceback = False
        return False

    def _note_error(self, message: str) -> None:
        found = re.search(r"Configuration error: (.+)", message)
        if found:
            self.config_error = self.config_error or found.group(1)
        elif message.strip():
            self.error = message.strip()

    @property
    def reason(self) -> str | None:
        """Why the run failed, in one line (None when nothing says)."""
        return self.config_error or self.exception or self.error
