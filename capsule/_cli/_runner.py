"""How ``capsule run APP`` runs an app: the supervisor, the control server, the status view
and the signals.

Must not hold logic of its own: it opens the supervisor and the control server, shows
their statistics, and turns SIGINT, SIGTERM and SIGHUP into a graceful stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import structlog

from capsule._cli._common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    app_dir_problem,
    printable,
)
from capsule._cli._status import rates, rich_view, status_lines
from capsule._control._runs import running_apps
from capsule._control._server import ControlServer, open_control_server
from capsule._manifest import App, load_app
from capsule._supervisor._open import open_supervisor
from capsule.errors import ConfigError

__all__ = ["run"]

_log = structlog.get_logger("capsule.run")

EXIT_FORCED: Final = 130
"""A second signal while stopping: exit at once (what is left is removed at the next start)."""
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_TERMINAL_INTERVAL: Final = 1.0
_LOG_INTERVAL: Final = 30.0


class _StderrLogger:
    """structlog's last step: one line to whatever ``sys.stderr`` is at the time (the live
    view redirects it above the table)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _escape_controls(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog step before the console renderer: text a feature wrote (its output, a
    remote traceback, a topic or path it named) has its control characters escaped, so it
    cannot drive the terminal. A traceback keeps its newlines."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable(value, keep="\n" if key == "exception" else "")
    return event_dict


def configure_logging(log_format: str, *, debug: bool) -> None:
    """The supervisor's log lines on stderr: info and above (debug with ``--debug``).

    JSON lines carry the text exactly (JSON escapes control characters itself); console
    lines show control characters escaped."""
    renderer: list[Any] = (
        [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        if log_format == "json"
        else [
            structlog.processors.format_exc_info,
            _escape_controls,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.INFO
        ),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=False,
    )


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def run(args: argparse.Namespace) -> int:
    if app_dir_problem("run", args.app):
        return EXIT_USAGE
    configure_logging(args.log_format, debug=args.debug)
    try:
        app = load_app(Path(args.app))
    except ConfigError as exc:
        more = f" (`capsule check {args.app}` lists them all)" if len(exc.problems) > 1 else ""
        print(f"capsule run: error: {exc}{more}", file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        return anyio.run(_serve, args, app, backend="trio")
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None  # one error: the command line prints it as one line
        raise


async def _serve(args: argparse.Namespace, app: App) -> int:
    return await _Runner(args, app).main()


class _Runner:
    """Runs the app until the first signal, then stops it.

    Once the app is up, the first signal ends the block of ``open_supervisor`` normally, so
    the supervisor stops each feature with its background tasks still serving. While the
    features are still starting it cancels the start instead (the supervisor then cleans
    up as well, though it may wait out each feature's stop timeout).
    """

    def __init__(self, args: argparse.Namespace, app: App) -> None:
        self.args = args
        self.app = app
        self.starting = anyio.CancelScope()
        self.stop = anyio.Event()
        self.up = False

    async def main(self) -> int:
        args = self.args
        others = [run.pid for run in running_apps() if run.app == self.app.manifest.name]
        if others and args.state_dir is None:
            _log.warning(
                "the app is already running",
                app=self.app.manifest.name,
                pids=others,
                hint="both runs share its private storage; give this one --state-dir",
            )
        async with anyio.create_task_group() as tg:
            await tg.start(self._signals)
            try:
                with self.starting:
                    async with (
                        open_supervisor(
                            self.app,
                            audit=args.audit,
                            state_dir=args.state_dir,
                            start_timeout=args.start_timeout,
                            stop_timeout=args.stop_timeout,
                            call_timeout=args.call_timeout,
                        ) as sup,
                        open_control_server(sup) as server,
                    ):
                        self.up = True
                        _log.info(
                            "app running",
                            app=self.app.manifest.name,
                            features=len(sup.features()),
                            control=str(server.socket_path),
                            audit=str(sup.audit_path),
                        )
                        async with anyio.create_task_group() as shown:
                            shown.start_soon(self._show, server)
                            await self.stop.wait()
                            shown.cancel_scope.cancel()
            finally:
                tg.cancel_scope.cancel()
        _log.info("app stopped", app=self.app.manifest.name)
        return EXIT_OK

    async def _signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The first signal stops the app (gracefully); a second one exits at once."""
        with anyio.open_signal_receiver(*_SIGNALS) as received:
            task_status.started()
            async for signum in received:
                name = signal.Signals(signum).name
                if not self.stop.is_set():
                    _log.info(
                        "stopping", signal=name, hint="a second Ctrl-C or signal exits at once"
                    )
                    self.stop.set()
                    if not self.up:
                        self.starting.cancel()
                    continue
                _log.warning(
                    "forced exit",
                    signal=name,
                    hint="the next start removes what is left of this run",
                )
                sys.stdout.flush()
                os._exit(EXIT_FORCED)

    async def _show(self, server: ControlServer) -> None:
        interval = self.args.interval
        if self.args.no_status:
            await anyio.sleep_forever()
        elif sys.stdout.isatty():
            await self._live(server, interval or _TERMINAL_INTERVAL)
        else:
            await self._lines(server, interval or _LOG_INTERVAL)

    async def _lines(self, server: ControlServer, interval: float) -> None:
        previous = None
        while True:
            current = server.snapshot()
            for line in status_lines(
                current, rates(previous, current), log_format=self.args.log_format
            ):
                print(line, flush=True)
            previous = current
            await anyio.sleep(interval)

    async def _live(self, server: ControlServer, interval: float) -> None:
        from rich.live import Live  # noqa: PLC0415 - rich only for a terminal

        footer = f"control {server.socket_path}  audit {server.sup.audit_path}"
        footer += "  (Ctrl-C stops the app)"
        previous = server.snapshot()
        # log lines on the same terminal go above the table; a redirected stderr keeps them
        redirect = sys.stderr.isatty()
        with Live(auto_refresh=False, redirect_stderr=redirect, redirect_stdout=True) as live:
            live.update(
                rich_view(previous, {}, width=live.console.width, footer=footer), refresh=True
            )
            while True:
                await anyio.sleep(interval)
                current = server.snapshot()
                found = rates(previous, current)
                view = rich_view(current, found, width=live.console.width, footer=footer)
                live.update(view, refresh=True)
                previous = current
