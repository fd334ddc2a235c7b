"""``/v1/webhooks/whatsapp``: Meta's verification handshake (GET) and its signed deliveries
(POST), recorded for the archive worker and handed to the repair of failed sends.

Neither takes the client token (Meta cannot send it): the handshake needs
``MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN``, a delivery a valid ``X-Hub-Signature-256`` made with
``WHATSAPP_APP_SECRET``; without the variable the endpoint answers 503 naming it. An app that
already receives Meta's webhooks forwards the raw body with its original signature header.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..registry import AsyncMediaRegistry
from ..webhooks import WebhookReport, verify_signature
from .answers import error_responses
from .endpoints import _receive
from .metrics import Monitor

PATH = "/v1/webhooks/whatsapp"
WEBHOOK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "parameters": [{"name": "X-Hub-Signature-256", "in": "header", "required": True,
                                "schema": {"type": "string"}, "description": "sha256= and the hex HMAC-SHA256 "
                                "of the raw body keyed with WHATSAPP_APP_SECRET"}]}
MAX_WEBHOOK_BODY = 4 * 1024 * 1024  # Meta's deliveries are a few kilobytes


class WebhookEndpoints:
    """The two webhook endpoints over the service's registry; ``wake`` tells the archive
    worker that items arrived."""

    def __init__(self, registry: AsyncMediaRegistry, monitor: Monitor, body_timeout: int,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.registry = registry
        self.monitor = monitor
        self.body_timeout = body_timeout
        self.wake = wake
        logging.getLogger("uvicorn.access").addFilter(hide_webhook_query)

    def routes(self, router: APIRouter) -> None:
        """Add the endpoints to ``router`` (one without the client token)."""
        router.add_api_route(PATH, self.handshake, methods=["GET"], response_class=PlainTextResponse,
                             responses=error_responses(400, 403, 503), summary="Meta's webhook verification handshake")
        router.add_api_route(PATH, self.deliver, methods=["POST"], response_model=WebhookReport,
                             responses=error_responses(400, 401, 403, 413, 503), openapi_extra=WEBHOOK_BODY,
                             summary="A webhook delivery signed by Meta: inbound media recorded, failed sends repaired")

    async def handshake(
        self, mode: Annotated[str, Query(alias="hub.mode")] = "",
        token: Annotated[str, Query(alias="hub.verify_token")] = "",
        challenge: Annotated[str, Query(alias="hub.challenge", max_length=1024)] = "",
    ) -> Response:
        """``hub.challenge`` as text when the verify token is ours, 403 otherwise."""
        secret = self.registry.settings.webhook_verify_token
        if secret is None:
            return _error(503, "ConfigError", "the webhook handshake needs MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN: "
                          "set it to the verify token entered in Meta's app dashboard")
        if mode != "subscribe" or not hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
            return _error(403, "AccessDenied", "wrong hub.mode or hub.verify_token; enter the value of "
                          "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN in Meta's app dashboard")
        return PlainTextResponse(challenge)

    async def deliver(self, request: Request) -> Response:
        """Check the signature, record the items and statuses, answer 200 with the report."""
        secret = self.registry.settings.app_secret
        if secret is None:
            return _error(503, "ConfigError", "webhook deliveries need WHATSAPP_APP_SECRET to check their "
                          "signature: set it to the app secret from Meta's app dashboard")
        body = await self._body(request)
        if body is None:
            return _error(413, "MediaTooLarge", f"a webhook body over {MAX_WEBHOOK_BODY:,} bytes; Meta's are small")
        header = request.headers.get("x-hub-signature-256")
        if not header:
            return _error(401, "NotAuthenticated", "no X-Hub-Signature-256 header; forward Meta's delivery "
                          "with its original signature header")
        if not verify_signature(body, header, secret.get_secret_value()):
            return _error(403, "AccessDenied", "X-Hub-Signature-256 does not sign this body with "
                          "WHATSAPP_APP_SECRET; forward the raw body unchanged, and check the app secret")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "InputError", "the signed body is not JSON; forward Meta's raw body")
        report = await self.registry.handle_webhook(payload)
        self.monitor.observe_webhook(report)
        if report.recorded:
            self.wake()
        return JSONResponse(report.model_dump())

    async def _body(self, request: Request) -> bytes | None:
        body = bytearray()
        too_large = False

        async def take(chunk: bytes) -> None:
            nonlocal too_large
            too_large = too_large or len(body) + len(chunk) > MAX_WEBHOOK_BODY
            if not too_large:
                body.extend(chunk)

        await _receive(request, self.body_timeout, take)
        return None if too_large else bytes(body)


def hide_webhook_query(record: logging.LogRecord) -> bool:
    """uvicorn's access line without the webhook's query string: the handshake carries the
    verify token there."""
    args: Any = record.args
    if isinstance(args, tuple) and len(args) > 2 and str(args[2]).startswith(PATH + "?"):
        record.args = (*args[:2], PATH, *args[3:])
    return True


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)

