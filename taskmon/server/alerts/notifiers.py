"""Notifiers: the ``[notifiers.NAME]`` tables, and delivering a transition to them.

A notifier is a webhook (a JSON POST with a Slack-compatible ``text``) or a
shell command (the same JSON on standard input). Each delivery runs within
its notifier's own timeout and retries, so one receiver that fails or hangs
never delays the others, nor the hub that evaluates.

No textual, typer or rich here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from taskmon.config import ConfigError
from taskmon.domain.version import __version__

if TYPE_CHECKING:
    from taskmon.server.alerts.runner import AlertStatus

__all__ = ["Delivery", "Notifier", "deliver", "parse_notifier", "payload"]

logger = logging.getLogger("taskmon.server.alerts")

_NOTIFIER_KEYS = ("webhook", "command", "timeout", "retries", "backoff")


@dataclass(frozen=True)
class Notifier:
    """One ``[notifiers.NAME]`` table: a webhook or a command.

    Attributes:
        name: its name in ``notify = [...]``.
        webhook: an http(s) URL receiving a JSON POST with a ``text`` field.
        command: a shell command receiving the JSON on standard input.
        timeout: seconds one attempt may take.
        retries: further attempts of a webhook after a failure (5xx, 429, a
            timeout or a connection error); a command runs once.
        backoff: seconds before the first retry, doubled before each next one.
    """

    name: str
    webhook: str | None = None
    command: str | None = None
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 1.0


def parse_notifier(name: str, table: Mapping[str, Any], source: str) -> Notifier:
    """Check one ``[notifiers.NAME]`` table.

    Raises:
        ConfigError: one line: `source`, the notifier, the problem.
    """
    where = f"{source}: notifier {name!r}"
    for key in table:
        if key not in _NOTIFIER_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_NOTIFIER_KEYS)})")
    webhook, command = table.get("webhook"), table.get("command")
    if (webhook is None) == (command is None):
        raise ConfigError(f'{where}: needs exactly one of webhook = "URL" or command = "..."')
    if webhook is not None:
        if not isinstance(webhook, str):
            raise ConfigError(f"{where}: webhook must be a string (an http or https URL)")
        parts = urlsplit(webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: webhook {webhook!r} is not an http:// or https:// URL")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ConfigError(f"{where}: command must be a non-empty string")
    numbers: dict[str, float] = {}
    for key, default, low in (("timeout", 10.0, 0.001), ("backoff", 1.0, 0.0)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number of seconds")
        if not math.isfinite(value) or value < low:
            raise ConfigError(f"{where}: {key} must be a number of seconds above {low:g}")
        numbers[key] = float(value)
    retries = table.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        raise ConfigError(f"{where}: retries must be a whole number from 0 to 20")
    return Notifier(name, webhook, command, numbers["timeout"], retries, numbers["backoff"])


@dataclass(frozen=True)
class Delivery:
    """How one notification went.

    Attributes:
        notifier: the notifier's name.
        rule: the rule's name.
        transition: ``firing`` or ``resolved``.
        ok: delivered (a 2xx answer; a command exiting 0).
        attempts: how many tries it took (or were made).
        error: the last failure, if it was not delivered.
        seconds: how long it took in all.
    """

    notifier: str
    rule: str
    transition: str
    ok: bool
    attempts: int
    error: str | None
    seconds: float


def payload(status: AlertStatus) -> dict[str, Any]:
    """The JSON a notifier receives: ``text`` (Slack-compatible), ``alert`` (the details)."""
    return {
        "text": status.text(),
        "alert": {**status.to_dict(), "transition": status.transition},
    }


async def deliver(notifier: Notifier, status: AlertStatus) -> Delivery:
    """Send `status` (its transition) to `notifier`; never raises for a receiver's failure."""
    started = time.monotonic()
    body = json.dumps(payload(status), ensure_ascii=False).encode()
    transition = status.transition or ""
    if notifier.command is not None:
        ok, error = await _run_command(notifier.command, body, notifier.timeout)
        attempts = 1
    else:
        assert notifier.webhook is not None
        ok, error, attempts = False, None, 0
        for attempt in range(notifier.retries + 1):
            if attempt:
                await asyncio.sleep(notifier.backoff * 2 ** (attempt - 1))
            attempts += 1
            ok, error, retry = await _post_once(notifier.webhook, body, notifier.timeout)
            if ok or not retry:
                break
    seconds = time.monotonic() - started
    if not ok:
        logger.warning(
            "notifier %s could not deliver alert %r (%s) after %d attempt(s): %s",
            notifier.name,
            status.name,
            transition,
            attempts,
            error,
        )
    return Delivery(notifier.name, status.name, transition, ok, attempts, error, seconds)


async def _post_once(url: str, body: bytes, timeout: float) -> tuple[bool, str | None, bool]:
    """One POST: ``(delivered, error, worth retrying)``."""
    try:
        async with asyncio.timeout(timeout):
            code = await _post(url, body)
    except TimeoutError:
        return False, f"no answer within {timeout:g}s", True
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        return False, f"{type(exc).__name__}: {exc}", True
    if 200 <= code < 300:
        return True, None, False
    # a receiver refusing the request will refuse it again; an overloaded one may not
    return False, f"HTTP {code}", code >= 500 or code in (408, 429)


async def _post(url: str, body: bytes) -> int:
    """POST `body` as JSON to `url` over HTTP/1.1; returns the status code."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if secure else None
    )
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        authority = parts.netloc.rpartition("@")[2]
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: taskmon/{__version__}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        line = await reader.readline()
        fields = line.decode("latin-1").split()
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ValueError(f"not an HTTP response: {line[:60]!r}")
        return int(fields[1])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _run_command(command: str, body: bytes, timeout: float) -> tuple[bool, str | None]:
    """Run `command` in a shell with `body` on stdin; killed (with its children) at `timeout`."""
    try:
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills what it started
        )
    except OSError as exc:
        return False, f"cannot start: {exc}"
    try:
        async with asyncio.timeout(timeout):
            _, err = await proc.communicate(body)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"killed after {timeout:g}s"
    if proc.returncode == 0:
        return True, None
    last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
    return False, f"exit status {proc.returncode}: {last[0][:200]}".rstrip(": ")
