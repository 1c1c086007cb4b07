"""The middleware's hooks alone: CPU per task of pre_send, pre_execute and post_execute.

`overhead.py` measures hooks and writer together; this isolates the part every
task pays on its own path. The hooks are called as TaskIQ calls them (each
result through ``maybe_awaitable``), on prebuilt messages of one no-op task
``noop(i, payload)`` (TaskIQ's own work, building and parsing messages, is left
out), against the recorder the middleware makes for itself, never started: its
buffer is emptied every 1000 tasks, as a running writer would, so submit costs
what it costs in a worker. ``--fail`` runs the failure path instead (on_error,
then post_execute with an error result).

    python bench/hooks.py [--tasks 20000] [--runs 7] [--fail] [--profile]
    python bench/hooks.py --instructions [--tasks 2000]   # needs valgrind

Without ``--instructions`` it prints the median and range of the CPU time per
task over the runs. With it, the hooks run under ``valgrind --tool=callgrind``
for N and 3N tasks (3N messages built in both), and the difference divided by
2N is the per-task count of instructions, start-up excluded: a figure that
noise on a shared machine does not move. ``--profile`` prints a cProfile of one run, by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import callgrind_total, child_env, spread
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqResult
from taskiq.utils import maybe_awaitable

from taskmon.worker.middleware import MonitoringMiddleware

PAYLOAD = {"user": "alice", "password": "x", "body": "y" * 200}


def _setup() -> tuple[MonitoringMiddleware, Any]:
    monitor = MonitoringMiddleware(dsn="postgresql://nobody@127.0.0.1:1/none")
    broker = InMemoryBroker().with_middlewares(monitor)

    @broker.task(task_name="bench:noop")
    async def noop(i: int, payload: dict[str, str]) -> int:
        return i

    monitor._spec_of("bench:noop")  # as startup() does
    monitor.recorder = monitor._make_recorder()  # never started: nothing is written
    return monitor, noop


def _messages(n: int) -> list[TaskiqMessage]:
    return [
        TaskiqMessage(
            task_id=f"{i:032x}", task_name="bench:noop", labels={}, args=[i, PAYLOAD], kwargs={}
        )
        for i in range(n)
    ]


async def _run(n: int, fail: bool, built: int) -> float:
    monitor, _ = _setup()
    recorder = monitor.recorder
    assert recorder is not None
    messages = _messages(max(n, built))[:n]
    error = ValueError("boom")
    result: TaskiqResult[Any] = TaskiqResult(
        is_err=fail, log=None, return_value=None, execution_time=0.0, error=error if fail else None
    )
    pre_send, pre_execute = monitor.pre_send, monitor.pre_execute
    on_error, post_execute = monitor.on_error, monitor.post_execute
    spent = 0.0
    for start in range(0, n, 1000):
        chunk = messages[start : start + 1000]
        cpu0 = time.process_time()
        for message in chunk:
            # called as TaskIQ calls them: whatever a hook returns goes through maybe_awaitable
            await maybe_awaitable(pre_send(message))
            await maybe_awaitable(pre_execute(message))
            if fail:
                await maybe_awaitable(on_error(message, result, error))
            await maybe_awaitable(post_execute(message, result))
        spent += time.process_time() - cpu0
        recorder._pending.clear()
    return spent


def run(n: int, fail: bool, built: int = 0) -> float:
    """CPU seconds the hooks spend on `n` tasks (of `built` messages made beforehand)."""
    return asyncio.run(_run(n, fail, built))


CHILD = """
import sys
sys.path.insert(0, {here!r})
from hooks import run
run(int(sys.argv[1]), sys.argv[2] == "fail", int(sys.argv[3]))
"""


def _instructions(n: int, fail: bool, built: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        here = str(Path(__file__).resolve().parent)
        cmd = [
            sys.executable, "-c", CHILD.format(here=here),
            str(n), "fail" if fail else "ok", str(built),
        ]  # fmt: skip
        return callgrind_total(cmd, child_env(), Path(tmp) / "callgrind.out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--fail", action="store_true", help="the failure path")
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--profile", action="store_true", help="cProfile one run")
    args = parser.parse_args()
    path = "failing" if args.fail else "no-op"
    if args.instructions:
        n = args.tasks
        # both runs build the same 3N messages: only the hooks' work differs
        small, large = _instructions(n, args.fail, 3 * n), _instructions(3 * n, args.fail, 3 * n)
        print(f"hooks, {path} task: {(large - small) / (2 * n):,.0f} instructions per task")
        return
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(run, args.tasks, args.fail)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    run(args.tasks // 4, args.fail)  # warm-up
    per_task = [run(args.tasks, args.fail) * 1e6 / args.tasks for _ in range(args.runs)]
    print(
        f"hooks, {path} task, µs CPU per task over {args.runs} runs of {args.tasks}, "
        f"median (min-max): {spread(per_task, '.2f')}"
    )


if __name__ == "__main__":
    main()
