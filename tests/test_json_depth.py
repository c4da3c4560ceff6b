"""One depth limit (MAX_JSON_DEPTH) on every JSON that enters: 400 / PayloadError, never 500.

Each entrance is tried with requests nested 10 levels to 100,000: up to the limit (64)
they are accepted, past it refused with nothing stored. ``json`` recurses once per
level, so before the fix 1,000 levels raised RecursionError (a 500 on the API).
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django import forms
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.urls import include, path, reverse
from rest_framework.test import APIClient

from async_actions import service
from async_actions.context import ActionContext
from async_actions.handlers import handler
from async_actions.models import Action
from async_actions.payloads import (
    PayloadError,
    check_depth,
    check_payload,
    check_text_depth,
    loads,
)
from async_actions.views import AsyncFormView
from tests.helpers import TIMEOUT, communicator, make_action, new_session, wait_for
from tests.urls import urlpatterns as test_urlpatterns

LIMIT = 64
DEPTHS = [10, 63, 64, 65, 1_000, 100_000]


def nested(depth: int) -> list[Any]:
    """A list ``depth`` levels deep, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def accepted(depth: int) -> bool:
    return depth <= LIMIT


@handler("tests.depth.noop")
def noop(ctx: ActionContext) -> None:
    """Accepts any request and returns nothing (a deep echo would be refused as a result)."""


#: What the ``tests.depth.emit`` handler reports, by the name in its request.
EMIT: dict[str, Any] = {}


@handler("tests.depth.emit")
def emit(ctx: ActionContext) -> Any:
    value = EMIT[ctx.request["key"]]
    if ctx.request["where"] == "progress":
        ctx.set_progress(50, "deep data", value)
        return None
    return value


class JSONForm(forms.Form):
    name = forms.CharField()
    payload = forms.JSONField()


class JSONFormView(AsyncFormView):
    form_class = JSONForm
    url_namespace = "json_form_view"

    def run(self, ctx: ActionContext, data: Any) -> Any:
        return None


urlpatterns = [*test_urlpatterns, path("t/json-form/", include(JSONFormView.urls()))]


# -- the rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
def test_check_depth_refuses_values_deeper_than_the_limit(depth: int):
    if accepted(depth):
        check_depth(nested(depth), "The value")
        check_text_depth(nested_text(depth), "The text")
        assert loads(nested_text(depth), "The text") == nested(depth)
        return
    with pytest.raises(PayloadError, match=r"nested more than 64 levels.*MAX_JSON_DEPTH"):
        check_depth(nested(depth), "The value")
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        check_text_depth(nested_text(depth), "The text")
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        loads(nested_text(depth), "The text")
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        check_payload(nested(depth), "The value")


def test_objects_count_as_levels_and_brackets_inside_strings_do_not():
    deep_object = '{"a":' * 65 + "1" + "}" * 65
    with pytest.raises(PayloadError):
        loads(deep_object, "The text")
    text = json.dumps({"s": "[[[[{{{{" * 1000, "quote": 'a "[[" \\" [[[', "t": "\\"})
    assert loads(text, "The text")["s"].startswith("[[[[")


def test_an_unterminated_string_or_invalid_json_is_a_payload_error_not_a_crash():
    for text in ('"\\"\\"\\' * 100_000, '["abc', "{]", "", "\udc80"):
        with pytest.raises(PayloadError):
            loads(text, "The text")


def test_a_list_that_contains_itself_is_refused_not_walked_forever():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(PayloadError, match="nested more than"):
        check_payload(loop, "The value")


@pytest.mark.parametrize("bad", [0, -1, 501, "64", True, 2.5])
def test_a_bad_max_json_depth_is_reported_by_a_system_check(bad: Any):
    with override_settings(ASYNC_ACTIONS={"MAX_JSON_DEPTH": bad}):
        ids = [message.id for message in run_checks()]
    assert "async_actions.E070" in ids


# -- service.start, API, views, command ------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("depth", DEPTHS)
def test_service_start_refuses_a_too_deep_request_and_stores_nothing(depth: int):
    if accepted(depth):
        result = service.start("tests.depth.noop", nested(depth))
        assert result.ok
        assert Action.objects.get().request == nested(depth)
        return
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        service.start("tests.depth.noop", nested(depth))
    assert not Action.objects.exists()


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("deep", password="pw"))
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("depth", DEPTHS)
def test_api_answers_400_to_a_too_deep_request_and_stores_nothing(
    api: APIClient, runner: Any, depth: int
):
    body = '{"handler": "tests.depth.noop", "request": ' + nested_text(depth) + "}"
    response = api.post("/api/actions/", body, content_type="application/json")
    if accepted(depth):
        assert response.status_code == 201, response.content
        pk = response.json()["id"]
        assert Action.objects.get(pk=pk).request == nested(depth)
        wait_for(lambda: Action.objects.filter(pk=pk, status="succeeded").exists())
        return
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "too_deep"
    assert "at most 64 levels" in response.json()["detail"]
    assert not Action.objects.exists()


@pytest.mark.django_db
def test_api_refuses_a_10_mb_body_with_413_before_parsing_it(api: APIClient):
    body = "[" * 10_000_000
    response = api.post("/api/actions/", body, content_type="application/json")
    assert response.status_code == 413
    assert not Action.objects.exists()


@pytest.mark.django_db
def test_api_parser_reads_no_more_than_its_limit_even_when_the_length_is_not_checked(
    api: APIClient,
):
    # The cancel route parses nothing itself, so only the parser stands in the way.
    with override_settings(ASYNC_ACTIONS={"MAX_REQUEST_BYTES": 1000}):
        from async_actions.api.parsers import JSONParser, TooLarge

        with pytest.raises(TooLarge):
            JSONParser().parse(io.BytesIO(b"[" * 10_000), "application/json", {})


@pytest.mark.django_db(transaction=True)
@pytest.mark.urls("tests.test_json_depth")
@pytest.mark.parametrize("depth", DEPTHS)
def test_form_view_answers_400_to_a_too_deep_json_field_and_stores_nothing(runner: Any, depth: int):
    # The form's data is the request: the field's value sits one level inside it.
    data = {"name": "x", "payload": nested_text(depth - 1)}
    response = Client().post(reverse("json_form_view:initial"), data)
    if accepted(depth):
        assert response.status_code == 303, response.content
        assert Action.objects.get().request == {"name": "x", "payload": nested(depth - 1)}
        return
    assert response.status_code == 400
    assert "nested more than 63 levels" in response.content.decode()
    assert not Action.objects.exists()


@pytest.mark.django_db
@pytest.mark.urls("tests.test_json_depth")
def test_an_invalid_form_with_too_deep_json_is_400_not_a_crash_while_redisplayed():
    # Re-showing an invalid form parses the JSON field again (bound_data).
    response = Client().post(reverse("json_form_view:initial"), {"payload": nested_text(5000)})
    assert response.status_code == 400
    assert not Action.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_plain_view_fields_are_text_so_brackets_are_stored_not_parsed(runner: Any):
    response = Client().post(reverse("echo_view:initial"), {"word": nested_text(100_000)})
    assert response.status_code == 303
    assert Action.objects.get().request == {"word": nested_text(100_000)}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("depth", DEPTHS)
def test_command_refuses_a_too_deep_request_as_a_usage_error(runner: Any, depth: int):
    run = lambda: call_command(  # noqa: E731
        "async_actions_run",
        "tests.depth.noop",
        request=nested_text(depth),
        detach=True,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    if accepted(depth):
        run()
        assert Action.objects.get().request == nested(depth)
        return
    with pytest.raises(CommandError, match="nested more than 64 levels") as raised:
        run()
    assert raised.value.returncode == 2
    assert not Action.objects.exists()


# -- what a handler reports ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("where", ["progress", "result"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_too_deep_progress_data_or_result_fails_the_action_with_a_clear_error(
    runner: Any, where: str, depth: int
):
    key = f"{where}-{depth}"
    EMIT[key] = nested(depth)
    result = service.start("tests.depth.emit", {"key": key, "where": where})
    assert result.action is not None
    done = wait_for(lambda: Action.objects.filter(pk=result.action.pk).finished().first())
    stored = done.data if where == "progress" else done.response
    if accepted(depth):
        assert done.status == "succeeded", done.error
        assert stored == nested(depth)
        return
    assert done.status == "failed"
    assert "nested more than 64 levels" in done.error
    assert stored is None


@pytest.mark.django_db
@pytest.mark.parametrize("depth", DEPTHS)
def test_update_progress_and_complete_from_outside_refuse_too_deep_json(depth: int):
    action = service.start("tests.depth.noop", {}).action
    assert action is not None
    if accepted(depth):
        assert service.update_progress(action.pk, data=nested(depth)) is service.OpStatus.OK
        assert service.complete(action.pk, nested(depth)) is service.OpStatus.OK
        return
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        service.update_progress(action.pk, data=nested(depth))
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        service.complete(action.pk, nested(depth))
    action.refresh_from_db()
    assert (action.status, action.data, action.response) == ("pending", None, None)


# -- WebSocket frames -------------------------------------------------------------------


async def cancel_reply(ws: Any) -> dict[str, Any]:
    """The next answer to a cancel frame, past the state updates pushed meanwhile."""
    while True:
        frame = await ws.receive_json_from(10)
        if frame["type"] == "cancel":
            return frame


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_too_deep_websocket_frame_is_not_acted_on(depth: int):
    session = await new_session()
    action = await make_action(session)
    ws = communicator(action.pk, session)
    assert (await ws.connect(TIMEOUT))[0]
    await ws.receive_json_from(TIMEOUT)
    # A cancel frame whose padding makes the whole frame ``depth`` levels deep.
    await ws.send_to(text_data='{"type": "cancel", "pad": ' + nested_text(depth - 1) + "}")
    if accepted(depth):
        assert await cancel_reply(ws) == {"type": "cancel", "status": "ok"}
        await ws.disconnect()
        return
    if len(nested_text(depth)) > 4096:  # over the frame size limit: the socket is closed
        assert (await ws.receive_output(TIMEOUT))["type"] == "websocket.close"
    else:
        assert await ws.receive_nothing(0.2)
        await ws.send_json_to({"type": "cancel"})  # the socket still works, for a sane frame
        assert await cancel_reply(ws) == {"type": "cancel", "status": "ok"}
        await ws.disconnect()
    refreshed = await sync_to_async(Action.objects.get)(pk=action.pk)
    assert refreshed.status == ("pending" if len(nested_text(depth)) > 4096 else "cancelled")
