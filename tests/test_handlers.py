"""Handler options, the ``@handler`` handle, ``perform()``, the service's result shape
and async twins, and the one exception hierarchy (issue 16 items 5 and 6)."""

from __future__ import annotations

import dataclasses
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import ImproperlyConfigured

from async_actions import context, exceptions, handlers, loop, payloads, progress, service
from async_actions.context import ActionContext
from async_actions.exceptions import AsyncActionsError, HandlerError, PayloadError
from async_actions.handlers import (
    ActionHandler,
    Handle,
    HandlerOptions,
    get_handler,
    handler,
    unregister,
)
from async_actions.models import Action
from async_actions.service import OpStatus, StartResult, perform
from tests import actions as test_actions
from tests.actions import gate
from tests.helpers import wait_for
from tests.views import ExclusiveView


def _finished(pk: Any) -> Action:
    return wait_for(lambda: Action.objects.filter(pk=pk).finished().first())


def greet(user: str, session_key: str = "") -> str:
    """A perform() target whose parameters share names with perform()'s own options."""
    return f"{user}/{session_key}"


@pytest.fixture
def temporary_handler() -> Iterator[list[str]]:
    """Names appended here are unregistered after the test."""
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)


# -- HandlerOptions ---------------------------------------------------------------------


def test_options_are_frozen() -> None:
    options = HandlerOptions(max_attempts=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_attempts = 3  # type: ignore[misc]


def test_options_are_validated_when_built() -> None:
    with pytest.raises(HandlerError, match="on_busy must be 'wait' or 'refuse'"):
        HandlerOptions(on_busy="queue")
    with pytest.raises(HandlerError, match="max_attempts must be a whole number"):
        HandlerOptions().replace(max_attempts=0)


def test_one_retry_exception_class_is_stored_as_a_tuple() -> None:
    assert HandlerOptions(max_attempts=2, retry_on=KeyError).retry_on == (KeyError,)  # type: ignore[arg-type]


def test_a_bad_decorator_option_names_the_handler() -> None:
    with pytest.raises(HandlerError, match=r"Handler 'tests\.misdeclared': time_limit"):
        handler("tests.misdeclared", time_limit=-1)


def test_a_class_handler_is_not_changed_by_registration(temporary_handler: list[str]) -> None:
    class Flaky(ActionHandler):
        name = "tests.flaky_class"
        max_attempts = 2
        retry_on = KeyError  # type: ignore[assignment]  # one class is allowed

        def handle(self, ctx: ActionContext) -> Any:
            return None

    temporary_handler.append(Flaky.name)
    registered = get_handler(Flaky.name)
    assert registered.options.retry_on == (KeyError,)
    assert Flaky.retry_on is KeyError  # read, never written back
    assert registered.should_retry(KeyError(), attempt=1)


def test_a_bad_class_attribute_is_refused_at_registration() -> None:
    with pytest.raises(HandlerError, match=r"Handler 'tests\.bad_class': max_attempts"):

        class Bad(ActionHandler):
            name = "tests.bad_class"
            max_attempts = 0

    assert get_handler("tests.bad_class") is None


def test_a_key_function_on_a_handler_class_receives_the_request(
    temporary_handler: list[str],
) -> None:
    """A function in a class attribute must not become a method bound to the handler."""

    def per_customer(request: Any) -> str:
        return f"export:{request['customer']}"

    class Export(ActionHandler):
        name = "tests.export_class_key"
        concurrency_key = per_customer

        def handle(self, ctx: ActionContext) -> Any:
            return None

    class LambdaExport(ActionHandler):
        name = "tests.export_class_lambda_key"
        concurrency_key = lambda request: f"lambda:{request['customer']}"  # noqa: E731

        def handle(self, ctx: ActionContext) -> Any:
            return None

    temporary_handler.extend([Export.name, LambdaExport.name])
    assert get_handler(Export.name).get_concurrency_key({"customer": "acme"}) == "export:acme"
    assert get_handler(LambdaExport.name).get_concurrency_key({"customer": "x"}) == "lambda:x"


@pytest.mark.django_db
def test_a_class_key_function_sets_the_started_actions_key(temporary_handler: list[str]) -> None:
    class Export(ActionHandler):
        name = "tests.export_class_key_started"
        concurrency_key = lambda request: f"export:{request['customer']}"  # noqa: E731

        def handle(self, ctx: ActionContext) -> Any:
            return None

    temporary_handler.append(Export.name)
    result = service.start(Export.name, {"customer": "acme"}, session_key="s")
    assert result.ok
    assert result.action.concurrency_key == "export:acme"


def test_a_view_declares_its_options_like_a_handler() -> None:
    options = get_handler(ExclusiveView.handler_name()).options
    assert isinstance(options, HandlerOptions)
    assert (options.public, options.on_busy, options.time_limit) == (False, "refuse", 120)


# -- the handle -------------------------------------------------------------------------


def test_handler_returns_a_handle_that_still_calls_the_function(
    temporary_handler: list[str],
) -> None:
    @handler("tests.handle_demo", max_attempts=3)
    def demo(ctx: Any) -> str:
        """Demo."""
        return f"ran with {ctx}"

    temporary_handler.append("tests.handle_demo")
    assert isinstance(demo, Handle)
    assert (demo.name, demo.options.max_attempts) == ("tests.handle_demo", 3)
    assert demo("ctx") == "ran with ctx"
    assert demo.__doc__ == "Demo."
    assert demo.handler is get_handler("tests.handle_demo")


@pytest.mark.django_db
def test_handle_start_creates_an_action_of_its_handler() -> None:
    result = test_actions.echo.start({"say": "hi"}, session_key="s")
    assert isinstance(result, StartResult)
    assert result.ok and result.created
    assert (result.action.handler, result.action.request) == ("tests.echo", {"say": "hi"})
    assert result.action.session_key == "s"


@pytest.mark.django_db(transaction=True)
async def test_handle_astart_creates_an_action_from_async_code() -> None:
    result = await test_actions.echo.astart({"say": "hi"}, session_key="s")
    assert result.status is OpStatus.OK
    assert await Action.objects.filter(pk=result.action.pk, handler="tests.echo").aexists()


@pytest.mark.django_db
def test_start_takes_a_handle_or_a_handler() -> None:
    by_handle = service.start(test_actions.echo, session_key="s")
    by_handler = service.start(get_handler("tests.echo"), session_key="s")
    assert by_handle.action.handler == by_handler.action.handler == "tests.echo"


# -- perform ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_perform_keeps_its_options_apart_from_the_functions_arguments() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = perform(greet, args=["ann"], kwargs={"session_key": "k"}, session_key="owner")
    assert result.ok
    action = result.action
    assert action.request == {"args": ["ann"], "kwargs": {"session_key": "k"}}
    assert action.session_key == "owner"
    assert action.handler == "tests.test_handlers.greet"


def test_perform_runs_the_function_with_its_arguments(runner: Any) -> None:
    result = perform(greet, kwargs={"user": "ann", "session_key": "k"}, session_key="s")
    assert (_finished(result.action.pk).response, result.action.user) == ("ann/k", None)


@pytest.mark.django_db
def test_perform_with_inline_arguments_still_works_but_warns() -> None:
    with pytest.deprecated_call(match="args=.*kwargs="):
        result = perform(test_actions.add, 2, b=3, session_key="s")
    assert result.action.request == {"args": [2], "kwargs": {"b": 3}}


def test_perform_refuses_both_forms_at_once() -> None:
    with pytest.raises(TypeError, match="not both"):
        perform(test_actions.add, 2, args=[3])


def test_perform_is_still_importable_from_handlers() -> None:
    assert handlers.perform is service.perform
    from async_actions.handlers import perform as old_perform

    assert old_perform is service.perform


# -- one result shape -------------------------------------------------------------------


def test_every_operation_answers_status_and_ok() -> None:
    started = StartResult(OpStatus.BUSY)
    assert (started.status, started.ok) == (OpStatus.BUSY, False)
    assert (OpStatus.OK.status, OpStatus.OK.ok) == (OpStatus.OK, True)
    assert OpStatus.NOT_FOUND.ok is False
    assert started == OpStatus.BUSY
    assert started != OpStatus.OK
    assert StartResult(OpStatus.OK) == StartResult(OpStatus.OK)


@pytest.mark.django_db
def test_operations_take_an_action_or_its_id() -> None:
    first = service.start("tests.echo", session_key="s").action
    second = service.start("tests.echo", session_key="s").action
    assert service.cancel(first) is OpStatus.OK
    assert service.cancel(str(second.pk)).ok
    assert service.cancel(second.pk) is OpStatus.ACTION_COMPLETED
    assert service.cancel(uuid.uuid4()) is OpStatus.NOT_FOUND


# -- async twins ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_async_twins_change_running_actions(runner: Any) -> None:
    names = [f"twins-{uuid.uuid4().hex}" for _ in range(3)]
    started = [
        await service.astart("tests.wait", {"gate": name}, session_key="s") for name in names
    ]
    pks = [result.action.pk for result in started]
    for pk in pks:
        await _arunning(pk)
    assert await service.aupdate_progress(pks[0], 40, "from outside") is OpStatus.OK
    assert await service.acomplete(pks[0], {"done": True}) is OpStatus.OK
    assert await service.afail(pks[1], "Stopped by an operator.") is OpStatus.OK
    assert await service.acancel(pks[2]) is OpStatus.OK
    for name in names[:2]:  # the cancelled one stops at its next cancel check
        gate(name).set()
    ended = [await _afinished(pk) for pk in pks]
    assert [a.status for a in ended] == ["succeeded", "failed", "cancelled"]
    assert ended[0].response == {"done": True}
    assert ended[1].error == "Stopped by an operator."
    assert await service.acancel(pks[0]) is OpStatus.ACTION_COMPLETED


@pytest.mark.django_db(transaction=True)
async def test_aperform_starts_a_function(runner: Any) -> None:
    result = await service.aperform(test_actions.add, args=[2], kwargs={"b": 3}, session_key="s")
    assert (await _afinished(result.action.pk)).response == 5


async def _arunning(pk: Any) -> None:
    await _await(lambda: Action.objects.filter(pk=pk, status="running").exists())


async def _afinished(pk: Any) -> Action:
    return await _await(lambda: Action.objects.filter(pk=pk).finished().first())


async def _await(predicate: Any) -> Any:
    return await sync_to_async(wait_for)(predicate)


# -- exceptions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old_module", "name"),
    [
        (payloads, "PayloadError"),
        (payloads, "PayloadTooLarge"),
        (progress, "ProgressError"),
        (handlers, "HandlerError"),
        (context, "ActionError"),
        (context, "ActionCancelled"),
        (loop, "EscapedBaseException"),
    ],
)
def test_every_exception_lives_in_exceptions_under_one_base(old_module: Any, name: str) -> None:
    cls = getattr(exceptions, name)
    assert getattr(old_module, name) is cls  # the old import path keeps working
    assert issubclass(cls, AsyncActionsError)
    assert cls.__module__ == "async_actions.exceptions"


def test_exceptions_keep_their_builtin_bases() -> None:
    assert issubclass(PayloadError, TypeError) and issubclass(PayloadError, ValueError)
    assert issubclass(HandlerError, ImproperlyConfigured)


@pytest.mark.django_db
def test_a_request_that_is_not_json_raises_the_common_base() -> None:
    with pytest.raises(AsyncActionsError):
        service.start("tests.echo", {"bad": {1, 2}}, session_key="s")


def test_async_to_sync_start_is_usable_from_sync_code_too() -> None:
    with pytest.raises(PayloadError):
        async_to_sync(service.astart)("tests.echo", object())
