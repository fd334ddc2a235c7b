"""Meta's refusal of a media ID at send time: the fake's ``/messages`` endpoint, ``kill_media``,
and :func:`media_id_refused` over the shapes senders meet (httpx, pywa, our own errors)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from media_registry import GraphAPIError, media_id_refused
from media_registry.errors import from_graph_response
from media_registry.testing import FakeGraphAPI, sample_media

PNG = "image/png"


def send(api: FakeGraphAPI, message: dict[str, Any], phone: str | None = None) -> httpx.Response:
    body = {"messaging_product": "whatsapp", "to": "+1 555 0100", **message}
    return httpx.post(f"{api.base_url}/{phone or api.phone_number_id}/messages", json=body,
                      headers={"Authorization": f"Bearer {api.token}"})


def image(media_id: str) -> dict[str, Any]:
    return {"type": "image", "image": {"id": media_id}}


def refused_response(api: FakeGraphAPI) -> httpx.Response:
    media_id = api.add_media(sample_media(PNG), PNG)
    api.kill_media(media_id)
    return send(api, image(media_id))


def test_messages_accepts_a_live_media_id_in_metas_shape(api: FakeGraphAPI) -> None:
    media_id = api.add_media(sample_media(PNG), PNG)
    response = send(api, image(media_id))
    assert response.status_code == 200
    answer = response.json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": "+1 555 0100", "wa_id": "15550100"}]
    assert answer["messages"][0]["id"].startswith("wamid.")
    assert api.sent_messages()[0]["image"] == {"id": media_id}


@pytest.mark.parametrize("kind", ["image", "audio", "video", "document", "sticker"])
def test_messages_refuses_unknown_ids_with_metas_code_100(api: FakeGraphAPI, kind: str) -> None:
    response = send(api, {"type": kind, kind: {"id": "1234567890"}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100
    assert error["message"] == (f"(#100) Param {kind}['id'] is not a valid whatsapp business "
                                "account media attachment ID")
    assert api.sent_messages() == []


def test_killed_and_expired_ids_are_refused(api: FakeGraphAPI) -> None:
    killed = api.add_media(sample_media(PNG, salt="k"), PNG)
    expiring = api.add_media(sample_media(PNG, salt="e"), PNG)
    assert send(api, image(killed)).status_code == 200
    api.kill_media(killed)
    assert send(api, image(killed)).status_code == 400
    assert not api.live(killed)
    api.advance(days=31)
    assert send(api, image(expiring)).status_code == 400


def test_an_id_of_another_number_is_refused(api: FakeGraphAPI) -> None:
    api.add_phone_number("111")
    media_id = api.add_media(sample_media(PNG), PNG, phone_number_id="111")
    assert send(api, image(media_id)).status_code == 400
    assert send(api, image(media_id), phone="111").status_code == 200


def test_messages_checks_the_request(api: FakeGraphAPI) -> None:
    assert send(api, {"type": "image", "image": {}}).status_code == 400
    assert send(api, {"to": ""}).status_code == 400
    text = send(api, {"type": "text", "text": {"body": "hi"}})
    assert text.status_code == 200
    unauthorized = httpx.post(f"{api.base_url}/{api.phone_number_id}/messages", json={})
    assert unauthorized.status_code == 401


def test_kill_media_of_an_unknown_id_is_a_clear_error(api: FakeGraphAPI) -> None:
    with pytest.raises(ValueError, match="never issued media ID '42'"):
        api.kill_media("42")


# -- media_id_refused ---------------------------------------------------------------------


def test_refused_response_and_http_status_error(api: FakeGraphAPI) -> None:
    response = refused_response(api)
    assert media_id_refused(response)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        response.raise_for_status()
    assert media_id_refused(raised.value)


def test_our_graph_api_error_and_wrapped_errors(api: FakeGraphAPI) -> None:
    response = refused_response(api)
    error = from_graph_response(response.status_code, response.json(), None)
    assert isinstance(error, GraphAPIError) and error.code == 100
    assert media_id_refused(error)
    try:
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise RuntimeError("send failed") from exc
    except RuntimeError as wrapped:
        assert media_id_refused(wrapped)


def test_pywa_exceptions_raised_by_pywa_itself(api: FakeGraphAPI) -> None:
    pywa = pytest.importorskip("pywa")
    from pywa.errors import WhatsAppError

    killed = api.add_media(sample_media(PNG), PNG)
    api.kill_media(killed)
    session = httpx.Client()
    wa = pywa.WhatsApp(phone_id=api.phone_number_id, token=api.token, session=session)
    session.base_url = api.base_url  # pywa points its session at graph.facebook.com
    with pytest.raises(WhatsAppError) as raised:
        wa.send_image(to="15550100", image=killed)
    assert media_id_refused(raised.value)
    assert raised.value.code == 100
    fine = api.add_media(sample_media(PNG, salt="fine"), PNG)
    assert wa.send_image(to="15550100", image=fine).id.startswith("wamid.")
    other = WhatsAppError.from_dict({"code": 131053, "message": "Media upload error"})
    assert not media_id_refused(other)


@pytest.mark.parametrize("status, error", [
    (400, {"code": 100, "message": "Param file must be a file with one of the following types"}),
    (400, {"code": 131053, "message": "Media upload error"}),
    (401, {"code": 190, "message": "Invalid OAuth access token"}),
    (400, {"code": 131009, "message": "Param image['id'] is not a valid whatsapp business account "
                                      "media attachment ID"}),
    (500, {"code": 100, "message": "(#100) Param image['id'] is not a valid whatsapp business "
                                   "account media attachment ID"}),
])
def test_other_graph_errors_are_not_refusals(status: int, error: dict[str, Any]) -> None:
    response = httpx.Response(status, json={"error": error})
    assert not media_id_refused(response)
    assert not media_id_refused(from_graph_response(status, {"error": error}, None))


def test_things_that_are_not_graph_errors() -> None:
    assert not media_id_refused(httpx.Response(200, json={"messages": [{"id": "wamid.x"}]}))
    assert not media_id_refused(httpx.Response(400, text="<html>bad gateway</html>"))
    assert not media_id_refused(ValueError("(#100) Param image['id'] is not a valid whatsapp business "
                                           "account media attachment ID"))
    assert not media_id_refused(None)
    streamed = httpx.Response(400, stream=httpx.ByteStream(b"{}"))
    assert not media_id_refused(streamed)


def test_messages_from_an_unknown_number_are_refused(api: FakeGraphAPI) -> None:
    response = send(api, {"type": "text", "text": {"body": "hi"}}, phone="999")
    assert response.status_code == 400 and response.json()["error"]["error_subcode"] == 33
