"""Handlers and performable functions used by the tests (importable by dotted path)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from async_actions.context import ActionContext, ActionError, current
from async_actions.handlers import ActionHandler, handler

#: Tests set these to hold a handler at a known point.
gates: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    return gates.setdefault(name, threading.Event())


@handler("tests.echo")
def echo(ctx: ActionContext) -> Any:
    return {"echo": ctx.request}


@handler("tests.progress")
def progress_steps(ctx: ActionContext) -> Any:
    steps = int(ctx.request.get("steps", 10))
    label = str(ctx.request.get("label", "step"))
    for i in range(steps):
        ctx.set_progress(100 * (i + 1) / steps, f"{label} {i + 1}", {"step": i + 1})
    return steps


@handler("tests.wait")
def wait_for_gate(ctx: ActionContext) -> Any:
    """Runs until its gate opens or it is cancelled."""
    ctx.set_progress(10, "waiting")
    name = ctx.request.get("gate", "default")
    while not gate(name).wait(0.01):
        ctx.raise_if_cancelled()
    return "released"


@handler("tests.stubborn")
def stubborn(ctx: ActionContext) -> Any:
    """Ignores cancellation until its gate opens (a handler that never checks)."""
    gate(ctx.request.get("gate", "stubborn")).wait(60)
    return "late"


@handler("tests.boom")
def boom(ctx: ActionContext) -> Any:
    raise RuntimeError("secret path /etc/passwd in SQL")


@handler("tests.user_error")
def user_error(ctx: ActionContext) -> Any:
    raise ActionError("Row 3 is not a number")


@handler("tests.bad_response")
def bad_response(ctx: ActionContext) -> Any:
    return {"when": object()}


@handler("tests.logs")
def logs(ctx: ActionContext) -> Any:
    for i in range(int(ctx.request.get("count", 5))):
        ctx.log.info("line %d", i)
    return None


class Doubler(ActionHandler):
    name = "tests.doubler"

    def can_handle(self, request: Any) -> bool:
        return isinstance(request, dict) and "double" in request

    def handle(self, ctx: ActionContext) -> Any:
        return ctx.request["double"] * 2


def add(a: int, b: int) -> int:
    ctx = current()
    if ctx is not None:
        ctx.set_progress(50, "adding")
    return a + b


@handler("tests.crash")
def crash(ctx: ActionContext) -> Any:
    """Ends its whole process at once, as a crash in C code does: no except, no finally.

    With ``trigger`` (a file path) it first waits for that file, so a test can see it run.
    """
    _record_run(ctx)
    trigger = ctx.request.get("trigger")
    while trigger and not os.path.exists(trigger):
        ctx.wait_cancelled(0.01)
    os._exit(int(ctx.request.get("code", 70)))


def _record_run(ctx: ActionContext) -> None:
    """One line per run in AA_RUN_LOG, so a test across processes can count runs."""
    path = os.environ.get("AA_RUN_LOG")
    if path:
        line = f"{ctx.action_id} {ctx.attempt} {os.getpid()}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _steps(ctx: ActionContext) -> Any:
    _record_run(ctx)
    steps = int(ctx.request.get("steps", 5))
    for i in range(steps):
        ctx.raise_if_cancelled()
        ctx.set_progress(100 * i / steps, f"step {i + 1} of {steps}", {"pid": os.getpid()})
        ctx.wait_cancelled(float(ctx.request.get("delay", 0.02)))
    ctx.raise_if_cancelled()
    return {"steps": steps, "pid": os.getpid()}


@handler("tests.scaled_work")
def scaled_work(ctx: ActionContext) -> Any:
    return _steps(ctx)


@handler("tests.scaled_retry", max_attempts=2)
def scaled_retry(ctx: ActionContext) -> Any:
    return _steps(ctx)


@handler("tests.wait_file")
def wait_for_file(ctx: ActionContext) -> Any:
    """Runs until the file at ``path`` exists or it is cancelled: a gate another process opens."""
    path = ctx.request["path"]
    while not os.path.exists(path):
        if ctx.wait_cancelled(0.02):
            ctx.raise_if_cancelled()
    return "released"


class Boom(BaseException):
    """A BaseException of a handler's own (libraries use such for control flow)."""


#: The BaseException kinds a handler may raise; each must fail only its action.
BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "Boom": Boom,
    "CancelledError": asyncio.CancelledError,
}


@handler("tests.raise_base")
def raise_base(ctx: ActionContext) -> Any:
    raise BASE_EXCEPTIONS[ctx.request["kind"]]()


@handler("tests.araise_base")
async def araise_base(ctx: ActionContext) -> Any:
    await asyncio.sleep(0)
    raise BASE_EXCEPTIONS[ctx.request["kind"]]()


#: Tests put a barrier here; ``tests.meet`` actions wait on it.
barriers: dict[str, threading.Barrier] = {}


@handler("tests.meet")
def meet(ctx: ActionContext) -> Any:
    """Returns once as many parties as the barrier wants (the test among them) met."""
    barriers[ctx.request["barrier"]].wait(timeout=10)
    return "met"


@handler("tests.held_work", max_attempts=2)
def held_work(ctx: ActionContext) -> Any:
    """Records its run; holds until cancelled while the process has AA_HOLD=1."""
    _record_run(ctx)
    while os.environ.get("AA_HOLD") == "1" and not ctx.wait_cancelled(0.05):
        pass
    ctx.raise_if_cancelled()
    return {"attempt": ctx.attempt}


@handler("tests.scaled_lockstep")
def scaled_lockstep(ctx: ActionContext) -> Any:
    """Report step i (and finish, as step ``steps + 1``) only once the test has created
    ``<AA_GATE_DIR>/<action id>.<i>``.

    The test creates that file after it saw step i - 1 on its WebSocket, so no step is
    published before the tab is subscribed or while it is still behind.
    """
    _record_run(ctx)
    steps = int(ctx.request.get("steps", 3))
    gate_dir = os.environ["AA_GATE_DIR"]
    for i in range(1, steps + 2):
        released = os.path.join(gate_dir, f"{ctx.action_id}.{i}")
        waited = 0.0
        while not os.path.exists(released):
            if ctx.wait_cancelled(0.01):
                ctx.raise_if_cancelled()
            waited += 0.01
            if waited > 120:
                raise ActionError(f"step {i} was never released")
        if i <= steps:
            ctx.set_progress(100 * i / (steps + 1), f"step {i} of {steps}")
    return {"steps": steps, "pid": os.getpid()}


def _pause(ctx: ActionContext) -> Any:
    _record_run(ctx)
    if ctx.wait_cancelled(float(ctx.request.get("seconds", 5))):
        ctx.raise_if_cancelled()
    return {"pid": os.getpid()}


@handler("tests.pause")
def pause(ctx: ActionContext) -> Any:
    """Records its run, then waits ``seconds`` (a long, mostly waiting action)."""
    return _pause(ctx)


@handler("tests.pause_retry", max_attempts=2)
def pause_retry(ctx: ActionContext) -> Any:
    """``tests.pause`` with a second attempt when its worker is lost."""
    return _pause(ctx)
@handler("tests.stubborn_limited", time_limit=1)
def stubborn_limited(ctx: ActionContext) -> Any:
    """Records its run, then ignores its time limit (and every cancel) for a minute: only
    a hard kill stops it in time."""
    _record_run(ctx)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "late"


@handler("tests.routed", queue="aa-routed", priority=3)
def routed(ctx: ActionContext) -> Any:
    """A handler that names its Celery queue and priority."""
    return "routed"
