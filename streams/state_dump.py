"""A worker's state on request: `kill -USR1 <pid>` writes where each partition and task waits.

A partition whose records stop moving while the worker stays up is the failure an SRE can least
afford to guess at: the dump says, per partition, what the consumer fetches (active, paused,
held back by a full stream buffer), what Faust believes is committed, what the offset guard
expects next and whether it has sought back, and the stack of every asyncio task. It goes to
`<stack_dir>/dumps/worker-<pid>-<UTC time>.txt`; the log names the file.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import signal
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust

from streams.offset_guard import offset_guard

log = logging.getLogger(__name__)

#: innermost awaits of each task written to a dump
STACK_FRAMES = 25


def install(app: faust.App, directory: Path) -> None:
    """Write a dump into `directory` whenever the worker receives SIGUSR1.

    Until the app's tasks start, mode's own SIGUSR1 handler (task stacks to stderr) answers;
    this one replaces it and adds the partition table.
    """

    @app.task
    async def dump_on_sigusr1() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, write, app, directory)


def write(app: faust.App, directory: Path) -> Path:
    """Write the dump now; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"worker-{os.getpid()}-{stamp}.txt"
    path.write_text(render(app), "utf-8")
    log.warning("worker state written to %s", path)
    return path


#: app → more sections for its dumps (the batch runtime's partitions)
_SECTIONS: weakref.WeakKeyDictionary[Any, list[Callable[[], str]]] = weakref.WeakKeyDictionary()


def describe_also(app: faust.App, section: Callable[[], str]) -> None:
    """Add `section()`'s text to every dump of `app`, after Faust's partition table."""
    _SECTIONS.setdefault(app, []).append(section)


def render(app: faust.App) -> str:
    """The partition table, then every task's stack (main loop, then the consumer's thread)."""
    out = io.StringIO()
    consumer: Any = app.consumer
    guard = offset_guard(app)
    out.write(f"generation {app.consumer_generation_id}, flow active {guard.flow_state()}\n")
    out.write(f"guard counts {guard.counts}\n\n")
    assignment = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    active = consumer._active_partitions
    expected = guard.expected_offsets()
    out.write("topic[partition] fetch committed highwater expected(reader: next, sought)\n")
    for tp in assignment:
        if tp in consumer._paused_partitions:
            fetch = "paused"
        elif tp in consumer._buffered_partitions:
            fetch = "buffer-full"
        elif active is not None and tp not in active:
            fetch = "inactive"
        else:
            fetch = "active"
        runs = ", ".join(f"{r}: {n}, {s}" for r, n, s in expected.get(tp, []))
        out.write(
            f"{tp.topic}[{tp.partition}] {fetch} {consumer._committed_offset.get(tp)}"
            f" {consumer.highwater(tp)} {runs or '-'}\n"
        )
    for section in _SECTIONS.get(app, []):
        out.write("\n" + section())
    loops = [("main", asyncio.get_running_loop())]
    thread_loop = getattr(getattr(consumer, "_thread", None), "thread_loop", None)
    if thread_loop is not None:
        loops.append(("consumer thread", thread_loop))
    for name, loop in loops:
        for task in sorted(asyncio.all_tasks(loop), key=repr):
            out.write(f"\n--- {name}: {task.get_name()}\n")
            for line in await_chain(task.get_coro())[-STACK_FRAMES:]:
                out.write(f"  {line}\n")
    return out.getvalue()


def await_chain(awaitable: Any) -> list[str]:
    """Where a suspended coroutine waits, outermost first, through every await it is in.

    `Task.print_stack` shows only the task's own frame while it is suspended; the await that
    blocks is usually several coroutines deeper.
    """
    chain = []
    while awaitable is not None:
        frame = (
            getattr(awaitable, "cr_frame", None)
            or getattr(awaitable, "gi_frame", None)
            or getattr(awaitable, "ag_frame", None)
        )
        if frame is not None:
            code = frame.f_code
            chain.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        elif not chain or not chain[-1].startswith("awaits "):
            chain.append(f"awaits {type(awaitable).__name__}")
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
            or getattr(awaitable, "ag_await", None)
            or _wrapped_coroutine(awaitable)
        )
    return chain


#: awaitables that hide the coroutine or async generator they drive
_WRAPPERS = frozenset({"coroutine_wrapper", "async_generator_asend", "async_generator_athrow"})


def _wrapped_coroutine(awaitable: Any) -> Any:
    """The coroutine behind `coroutine.__await__()` or an async generator's `asend`.

    Faust awaits its agents through the first and streams are async generators.
    """
    if type(awaitable).__name__ not in _WRAPPERS:
        return None
    driven = (
        r for r in gc.get_referents(awaitable) if hasattr(r, "cr_frame") or hasattr(r, "ag_frame")
    )
    return next(driven, None)
