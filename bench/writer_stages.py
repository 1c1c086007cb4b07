"""The writer's client CPU per attempt, stage by stage, on batches shaped like a busy worker's.

Each attempt is captured the way the middleware does it (arguments as JSON, the
same record submitted running and then finished), and each batch goes through
the recorder's own steps in one transaction: prepare (redaction and bounds),
rows, COPY and upsert, the event sequence, event encoding, NOTIFY. The figure
per stage is this process's CPU time (``time.process_time``) divided by the
attempts, the median of several rounds; the server's work is not counted.

    python bench/writer_stages.py [--batch 500] [--batches 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

from common import SERVER_DSN, scratch_database, spread

from taskmon.bus.postgres import PgNotifyPublisher
from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import CallSpec, capture_call
from taskmon.store import ingest
from taskmon.worker.recorder import Recorder

DB = "taskmon_bench_stages"
PAYLOAD = {"user": "alice", "password": "x", "body": "y" * 200}


def _submitted(recorder: Recorder, size: int) -> None:
    """`size` attempts submitted as the middleware does: running, then finished."""
    spec = CallSpec(("i", "payload"))
    for i in range(size):
        now = datetime.now(UTC)
        record = AttemptRecord(
            task_id=uuid.uuid4().hex, attempt=0, task_name="bench:noop",
            status=Status.RUNNING, worker="bench:1", queue="taskiq",
            labels={"_retries": 0}, enqueued_at=now, started_at=now,
            raw_params=capture_call([i, PAYLOAD], {}, spec), queue_wait_ms=1.0,
        )  # fmt: skip
        recorder.submit(record)
        record.status = Status.SUCCESS
        record.finished_at = datetime.now(UTC)
        record.duration_ms = 0.01
        recorder.submit(record)


class _Timed:
    """Wraps the writer's steps to add up the CPU each one takes."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, func):  # type: ignore[no-untyped-def]
        cpu = self.cpu

        if asyncio.iscoroutinefunction(func):
            # called per batch: CPU time, the server's answers are awaited in there

            async def timed_async(*args, **kwargs):  # type: ignore[no-untyped-def]
                c0 = time.process_time()
                try:
                    return await func(*args, **kwargs)
                finally:
                    cpu[name] += time.process_time() - c0

            return timed_async

        # called per attempt: the wall clock (a vDSO call; the CPU clock is a system
        # call that would cost more than some steps), nothing waits in there
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            c0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                cpu[name] += time.perf_counter() - c0

        return timed


async def run(dsn: str, batch: int, batches: int, rounds: int) -> None:
    import taskmon.worker.recorder as rec

    recorder = Recorder(dsn, publisher=PgNotifyPublisher(), batch_size=batch)
    conn = await recorder._connection()
    timed = _Timed()
    # the module-level names the writer calls, wrapped (restored at the end)
    # (older trees call prepare() and row_of(), newer ones encode_parts() and row())
    stages = {"prepare": "prepare", "encode_parts": "prepare", "row_of": "row", "row": "row"}
    stages["encode_event"] = "encode_event"
    saved = {name: getattr(rec, name) for name in stages if hasattr(rec, name)}
    names = ("upsert", "next_seqs", "upsert_taking_seqs", "upsert_notifying")
    saved_ingest = {name: getattr(ingest, name) for name in names if hasattr(ingest, name)}
    for name, func in saved.items():
        setattr(rec, name, timed.wrap(stages[name], func))
    for name, func in saved_ingest.items():
        setattr(ingest, name, timed.wrap(name, func))
    publisher = recorder.publisher
    assert publisher is not None
    publisher.in_transaction = timed.wrap("notify", publisher.in_transaction)  # type: ignore[method-assign]
    if hasattr(publisher, "split"):  # newer trees: the statement sends, split() prepares
        publisher.split = timed.wrap("split", publisher.split)
    per_round: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(rounds):
            timed.cpu.clear()
            total = 0.0
            for _ in range(batches):
                _submitted(recorder, batch)
                entries = [recorder._pending.pop(k) for k in list(recorder._pending)]
                c0 = time.process_time()
                await recorder._upsert(conn, entries)
                total += time.process_time() - c0
            n = batch * batches
            for name, seconds in timed.cpu.items():
                per_round[name].append(seconds * 1e6 / n)
            accounted = sum(timed.cpu.values())
            per_round["the rest (loop, transaction)"].append((total - accounted) * 1e6 / n)
            per_round["total"].append(total * 1e6 / n)
    finally:
        for name, func in saved.items():
            setattr(rec, name, func)
        for name, func in saved_ingest.items():
            setattr(ingest, name, func)
        await conn.close()
    print(f"client CPU µs per attempt, {batch} attempts per batch, median (min-max) of {rounds}")
    for name, values in per_round.items():
        print(f"   {name:30} {spread(values, '6.2f')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    args = parser.parse_args()
    # migrated once, outside the measured runs
    dsn = asyncio.run(scratch_database(DB, server=args.dsn))
    asyncio.run(run(dsn, args.batch, args.batches, args.rounds))


if __name__ == "__main__":
    main()
