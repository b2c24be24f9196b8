"""Whether the SuperLink still runs this ServerApp's run, so ``flwr stop`` is honoured.

How a ServerApp learns that its run was stopped (Flower 1.41). ``flwr stop`` makes the
SuperLink finish the run's task with sub-status ``stopped`` and revoke the task's token
(``LinkState.stop_run`` -> ``CoreState.finish_task``). Nothing tells the ServerApp:

- in simulation (``flwr-simulation``) the ServerApp talks to an ``InMemoryGrid`` on a private
  in-process LinkState that never hears of the stop, so every round still runs;
- Flower's own task heartbeat (``HeartbeatSender``, every ~20 s) then gets HTTP 401 for the
  revoked token, and its thread dies with the error instead of stopping the app;
- on a deployment (``flwr-serverapp``) only the next push/pull of the ``HttpGrid`` fails.

The Runtime API answers the same question directly: ``SendTaskHeartbeat`` with the task's
token returns ``success=False`` for a finished task, or 401 once its token is revoked. The
token and the Runtime API address are the app process's documented command line
(``flwr-simulation|flwr-serverapp --runtime-api-address ADDR --token T|--token-file F
[--insecure|--root-certificates PEM]``), so :class:`RunControl` reads them there and asks
once per round: a cheap call on loopback, made between rounds only. Anywhere else (the
in-process grid, tests, a token passed on stdin) there is nothing to ask and it never stops.

A heartbeat here only renews what Flower's own heartbeat renews; it changes no state.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("fl_ext")

APP_PROCESSES = ("flwr-simulation", "flwr-serverapp")
_ENDED_STATUS = (401, 403, 404)  # token revoked: the SuperLink finished the task

# probe(): True once the SuperLink ended the run, False while it runs, None when unknown
Probe = Callable[[], bool | None]


def runtime_probe(argv: list[str] | None = None) -> Probe | None:
    """A probe of this app process's task on the SuperLink, or None outside an app process."""
    argv = list(sys.argv if argv is None else argv)
    component = Path(argv[0]).name if argv else ""
    if component not in APP_PROCESSES:
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(
        "--runtime-api-address",
        "--simulationio-api-address",
        "--serverappio-api-address",
        dest="address",
        default=None,
    )
    parser.add_argument("--token", default=None)
    parser.add_argument("--token-file", default=None)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    known, _ = parser.parse_known_args(argv[1:])
    token = known.token
    if token is None and known.token_file is not None:
        try:
            token = Path(known.token_file).expanduser().read_text(encoding="utf-8")
        except OSError:
            token = None
    token = (token or "").strip()
    if not token:  # e.g. --token-stdin (warm executors): already consumed, nothing to ask with
        return None
    if known.address is None:
        from flwr.supercore.constant import SUPERLINK_DEFAULT_CLIENT_ADDRESS

        known.address = SUPERLINK_DEFAULT_CLIENT_ADDRESS  # the app processes' own default
    return _heartbeat_probe(
        address=known.address,
        token=token,
        insecure=bool(known.insecure),
        root_certificates=known.root_certificates,
        component=component,
    )


def _heartbeat_probe(
    *, address: str, token: str, insecure: bool, root_certificates: str | None, component: str
) -> Probe:
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=None if insecure else root_certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name=component),
            RuntimeTokenHttpInterceptor(token=token),
        ],
    )

    def probe() -> bool | None:
        try:
            response = client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.HTTPStatusError as err:
            if err.response.status_code in _ENDED_STATUS:
                return True
            log.debug("Run status unknown (HTTP %s)", err.response.status_code)
            return None
        except httpx.HTTPError as err:  # SuperLink unreachable for a moment: keep going
            log.debug("Run status unknown: %s", err)
            return None
        return not response.success

    return probe


class RunControl:
    """``should_stop`` for :meth:`FlExtFedAvg.start`: why the run must stop, else None.

    ``probe`` defaults to :func:`runtime_probe` of this process. The first time it says the
    run ended, ``reason`` is set, ``on_stop(reason)`` is called once and the probe is not
    asked again. :meth:`close_on_exit` covers the other way a stop arrives: Flower's own
    Runtime client sends SIGINT to its process on the first 401 (log upload, grid push), so
    the app process exits through Flower's exit handlers, usually before the round in
    progress ends; ``end()`` then closes the tracked run with what was logged so far.
    """

    def __init__(
        self,
        probe: Probe | None = None,
        *,
        run_id: int | None = None,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        self._probe = probe
        self.run_id = run_id
        self.reason: str | None = None
        self._on_stop = on_stop
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def for_this_process(
        cls, *, run_id: int | None = None, on_stop: Callable[[str], None] | None = None
    ) -> RunControl:
        """The control of the ``flwr-simulation``/``flwr-serverapp`` process running us."""
        try:
            probe = runtime_probe()
        except Exception as err:  # noqa: BLE001  (no control is better than no run)
            log.warning("Cannot watch the run status on the SuperLink: %s", err)
            probe = None
        return cls(probe, run_id=run_id, on_stop=on_stop)

    @property
    def active(self) -> bool:
        """True when there is a SuperLink to ask."""
        return self._probe is not None

    def __call__(self) -> str | None:
        with self._lock:
            if self.reason is not None or self._probe is None:
                return self.reason
            try:
                ended = self._probe()
            except Exception as err:  # noqa: BLE001  (a failed probe never ends a run)
                log.debug("Run status probe failed: %s", err)
                ended = None
            if not ended:
                return None
            run = f"run {self.run_id}" if self.run_id is not None else "the run"
            self.reason = f"{run} was stopped on the SuperLink (flwr stop)"
        if self._on_stop is not None:
            self._on_stop(self.reason)
        return self.reason

    def close_on_exit(self, end: Callable[[], None]) -> None:
        """If this app process exits because the run was stopped, before :meth:`close`: ``end()``.

        Flower runs the handler on SIGINT/SIGTERM and at the normal end of the process; it
        acts only when the SuperLink says the run ended (at that point a normally ending
        process has not yet reported its own end, so the task is still running).
        """
        if not self.active:
            return
        from flwr.supercore.exit import add_exit_handler

        def handler() -> None:
            if not self._closed.is_set() and self() is not None:
                self._closed.set()
                log.warning("Run stopped while a round was in progress: %s", self.reason)
                end()

        add_exit_handler(handler, run_before_force_exit=True)

    def close(self) -> None:
        """The run ended here: a later process exit leaves the tracked run alone."""
        self._closed.set()
