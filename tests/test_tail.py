"""`taskmon tail` and `taskmon serve` as real processes, with a real hub and recorder."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import publish, unconfigured_env, wait_for
from helpers import record as finished

from taskmon.domain.events import Status
from taskmon.server.hub import Hub
from taskmon.worker.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent

# failures say "KeyError: missing\nthing" and take 12 ms: the printed lines are checked
record = functools.partial(finished, duration_ms=12.0, error=("KeyError", "missing\nthing"))


class Proc:
    """A taskmon command running in the background, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self.readers = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, lines: list[str]) -> None:
        async for line in stream:
            lines.append(line.decode().rstrip("\n"))

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                # stuck: SIGABRT makes faulthandler print every thread's stack to stderr
                self.proc.send_signal(signal.SIGABRT)
                try:
                    await asyncio.wait_for(self.proc.wait(), 5)
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        await asyncio.gather(*self.readers)
        assert self.proc.returncode is not None
        return self.proc.returncode


async def taskmon(*args: str) -> Proc:
    env = unconfigured_env(PYTHONFAULTHANDLER="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskmon",
        *args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return Proc(proc)


async def test_tail_prints_matching_events_and_survives_a_hub_restart(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given
    hub = Hub(dsn=dsn, token="tok")
    url = await hub.start()
    port = int(url.rsplit(":", 1)[1].strip("/"))
    tail = await taskmon(
        "tail", "--hub-url", url, "--token", "tok", "--status", "failed", "--format", "jsonl"
    )
    try:
        await wait_for(lambda: any("following" in line for line in tail.err))

        # when
        await publish(pg_recorder, [record(1), record(2, Status.FAILED), record(3)])

        # then: one JSON line per matching event
        await wait_for(lambda: len(tail.out) == 1)
        event = json.loads(tail.out[0])
        assert event["status"] == "failed" and event["data"]["error_type"] == "KeyError"

        # when the hub restarts (NOTIFY keeps nothing meanwhile)
        await hub.stop()
        await wait_for(lambda: any("lost the hub" in line for line in tail.err))
        await publish(pg_recorder, [record(4, Status.FAILED)])
        hub = Hub(dsn=dsn, token="tok")
        await hub.start(port=port)
        await publish(pg_recorder, [record(5, Status.FAILED)])

        # then it says once that it reconnected and what may be missing, and goes on
        await wait_for(lambda: len(tail.out) == 2)
        assert json.loads(tail.out[1])["seq"] == 5
        notes = [line for line in tail.err if "reconnected" in line]
        assert len(notes) == 1
        assert "may be missing" in notes[0] and "after seq 2" in notes[0]
        assert sum("lost the hub" in line for line in tail.err) == 1
    finally:
        code = await tail.stop()
        assert code == 130, "\n".join(tail.err[-40:])  # Ctrl-C's exit status
        await hub.stop()


async def test_tail_without_a_hub_runs_one_in_process(dsn: str, pg_recorder: Recorder) -> None:
    tail = await taskmon("tail", "--dsn", dsn, "--task", "app:shown*")
    try:
        await wait_for(lambda: any("following" in line for line in tail.err))

        await publish(
            pg_recorder,
            [record(1, task="app:hidden"), record(2, Status.FAILED, task="app:shown-here")],
        )

        await wait_for(lambda: tail.out)
        [line] = tail.out
        assert "failed" in line and "app:shown-here" in line and "12ms" in line
        assert "KeyError: missing thing" in line
    finally:
        # a service manager stops it with SIGTERM: it stops its hub and exits 128 + 15
        code = await tail.stop(signal.SIGTERM)
        assert code == 143, "\n".join(tail.err[-40:])


async def test_tail_into_a_reader_that_leaves_exits_quietly(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given `taskmon tail | head -n 1`: stdout is a pipe whose reader goes away
    read_end, write_end = os.pipe()
    env = unconfigured_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskmon", "tail", "--dsn", dsn,
        cwd=ROOT, env=env, stdout=write_end, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    try:
        # when one line is read and the reader closes its end
        sent = 0

        async def printed() -> bytes:
            nonlocal sent
            # events until the tail (still starting) prints one
            await publish(pg_recorder, [record(sent)])
            sent += 1
            ready: tuple[list[int], list[int], list[int]] = await asyncio.to_thread(
                select.select, [read_end], [], [], 0.2
            )
            return os.read(read_end, 4096) if ready[0] else b""

        first = await wait_for(printed, timeout=60, interval=0, what="the tail's first line")
        assert b"app:work" in first
        os.close(read_end)
        read_end = -1
        for n in range(sent, sent + 10):  # the next writes meet a closed pipe
            await publish(pg_recorder, [record(n)])
        # then it ends with status 1 and says nothing about the database
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert proc.returncode == 1, err
        assert "error" not in err and "Traceback" not in err
    finally:
        if read_end >= 0:
            os.close(read_end)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "--status", "exploded"], "--status: unknown status 'exploded'"),
        (["tail", "--format", "xml"], "--format: 'xml' is not a format"),
        (["tail", "--hub-url", "http://x"], "not a ws:// or wss:// URL"),
        (["serve", "--host", "0.0.0.0"], "a token is required to listen on 0.0.0.0"),
    ],
)
async def test_bad_input_is_one_line_and_status_2(args: list[str], message: str) -> None:
    proc = await taskmon(*args)
    code = await asyncio.wait_for(proc.proc.wait(), 60)
    await asyncio.gather(*proc.readers)
    assert code == 2
    assert len(proc.err) == 1 and message in proc.err[0]
    assert proc.err[0].startswith("taskmon: error:")


async def test_serve_answers_healthz_and_stops_on_sigterm(dsn: str) -> None:
    serve = await taskmon("serve", "--port", "0", "--dsn", dsn, "--token", "t")
    await wait_for(lambda: any("listening on" in line for line in serve.err))
    line = next(line for line in serve.err if "listening on" in line)
    port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 200")
    writer.close()

    serve.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(serve.proc.wait(), 30) == 0
    await asyncio.gather(*serve.readers)


async def test_tail_with_no_hub_at_the_url_exits_1_at_once() -> None:
    # given a port nothing listens on (bound, then released)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # when tail is pointed there, it does not wait for a hub it never had
    tail = await taskmon("tail", "--hub-url", f"ws://127.0.0.1:{port}")
    await asyncio.wait_for(tail.proc.wait(), 30)
    code = await tail.stop()
    assert code == 1, tail.err
    [line] = tail.err
    assert line.startswith(f"taskmon: error: cannot reach the hub at ws://127.0.0.1:{port}")
    assert "lost the hub" not in line


async def test_tail_with_a_wrong_token_exits_1(dsn: str) -> None:
    hub = Hub(dsn=dsn, token="right")
    url = await hub.start()
    try:
        tail = await taskmon("tail", "--hub-url", url, "--token", "wrong")
        await asyncio.wait_for(tail.proc.wait(), 30)
        assert await tail.stop() == 1
        [line] = tail.err
        assert "refused the token" in line and "--token" in line
    finally:
        await hub.stop()
