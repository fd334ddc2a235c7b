"""``media-registry doctor``: what is wrong with this setup, one line per check, before the
first failed send says it.

Each check gives ✓ (fine), ! (a warning) or ✗ (broken) with the fix; ``network`` marks the
checks that ask the Graph API. Nothing here prints a secret, creates a registry or upgrades
one. The checks run in the order of :data:`CHECKS`.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from ..config import Settings
from ..content.archives import open_archive
from ..errors import AuthError, MediaNotFound, MediaRegistryError, RegistryLocked, one_line, redact
from ..graph import versions
from ..graph.client import GraphClient
from ..rules.context import graph_options
from ..rules.effects import Clock, utc_now
from ..store import open_store
from ..store.inspect import SchemaFacts, last_event, schema_facts

OK, WARN, FAIL = "ok", "warn", "fail"
SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗"}
# Expiry is counted on the local clock: a minute off is worth a warning, five minutes broken.
SKEW_WARNING = timedelta(seconds=60)
SKEW_BROKEN = timedelta(minutes=5)


@dataclass(frozen=True)
class Finding:
    """One check's outcome: its name, ``ok``/``warn``/``fail``, one line (with the fix when
    not ok), and whether it needed the network."""

    check: str
    status: str
    message: str
    network: bool = False

    def line(self) -> str:
        """How the command line prints it."""
        where = " [network]" if self.network else ""
        return f"{SYMBOLS[self.status]} {self.check}: {self.message}{where}"

    def as_json(self) -> dict[str, Any]:
        """The finding for ``--json``."""
        return {"check": self.check, "status": self.status, "symbol": SYMBOLS[self.status],
                "message": self.message, "network": self.network}


@dataclass
class Setup:
    """What the checks share: the settings, the clock, the Graph client, and what earlier
    checks learned (the registry's facts, the API's ``Date``)."""

    settings: Settings
    clock: Clock = utc_now
    transport: httpx.BaseTransport | None = None
    facts: SchemaFacts | None = None
    api_date: str | None = None
    token_ok: bool = False
    _graph: GraphClient | None = field(default=None, repr=False)

    def graph(self) -> GraphClient:
        """The Graph client, made once, with no retries (a doctor wants an answer now)."""
        if self._graph is None:
            options = graph_options(self.settings)
            options["max_retries"], options["timeout"] = 0, min(self.settings.timeout, 15.0)
            self._graph = GraphClient(transport=self.transport, clock=self.clock, **options)
        return self._graph

    def dated(self, date: str) -> None:
        """Keep the API's ``Date`` (of any answer: a refused token's too) for the clock check."""
        self.api_date = date

    def close(self) -> None:
        """Close the Graph client, if one was made."""
        if self._graph is not None:
            self._graph.close()


Check = Callable[[Setup], Iterator[Finding]]


def check_registry(setup: Setup) -> Iterator[Finding]:
    """Reachable; the backend and its version; the schema current, or the upgrade it will get."""
    db = setup.settings.db
    try:
        facts = setup.facts = schema_facts(db, setup.settings.busy_timeout)
    except MediaRegistryError as exc:
        yield Finding("registry", FAIL, str(exc))
        return
    if not facts.exists:
        yield Finding("registry", WARN, f"none at {db} yet ({facts.backend}); the first upload or "
                      "`media-registry init` creates it")
    elif facts.pending:
        yield Finding("registry", WARN, f"{db} ({facts.backend}): its next opening upgrades the schema "
                      f"({', '.join(facts.pending)}); run `media-registry init` to do it now")
    else:
        yield Finding("registry", OK, f"{db} ({facts.backend}), schema current")


def check_token(setup: Setup) -> Iterator[Finding]:
    """The token accepted, and allowed to read each configured phone number."""
    settings = setup.settings
    if settings.token is None:
        yield Finding("token", FAIL, "no access token: set WHATSAPP_TOKEN (a system user token with "
                      "whatsapp_business_messaging and whatsapp_business_management)", network=True)
        return
    phones = sorted({*([settings.phone_number_id] if settings.phone_number_id else []),
                     *settings.ttl_by_phone_number})
    if not phones:
        yield Finding("phone numbers", FAIL, "no phone number ID: set WHATSAPP_PHONE_NUMBER_ID", network=True)
        return
    for phone in phones:
        try:
            fields = _read(setup, phone, "verified_name,display_phone_number,quality_rating")
        except AuthError as exc:
            yield Finding("token", FAIL, str(exc), network=True)
            return
        except MediaNotFound:
            yield Finding(f"phone number {phone}", FAIL, "the token cannot read it: not a number of "
                          "this business, or the token lacks whatsapp_business_management; check "
                          "WHATSAPP_PHONE_NUMBER_ID and the token's assets", network=True)
            continue
        except MediaRegistryError as exc:
            yield Finding("graph api", FAIL, str(exc), network=True)
            return
        if not setup.token_ok:
            setup.token_ok = True
            yield Finding("token", OK, "accepted by the Graph API", network=True)
        shown = f"{fields.get('display_phone_number', '?')} ({fields.get('verified_name', '?')})"
        yield Finding(f"phone number {phone}", OK, f"{shown}, quality {fields.get('quality_rating', '?')}",
                      network=True)


def check_app(setup: Setup) -> Iterator[Finding]:
    """WHATSAPP_APP_ID, when set: the API knows the app (template header handles need it)."""
    app_id = setup.settings.app_id
    if app_id is None:
        yield Finding("app", OK, "WHATSAPP_APP_ID not set (only template header handles need it)")
        return
    if not setup.token_ok:
        return  # the token line already says what is wrong
    try:
        fields = _read(setup, app_id, "id,name")
    except MediaRegistryError as exc:
        yield Finding("app", FAIL, f"WHATSAPP_APP_ID {app_id}: the Graph API does not give it to this "
                      f"token ({exc}); check the App ID on the app's dashboard", network=True)
        return
    yield Finding("app", OK, f"{app_id} ({fields.get('name', '?')})", network=True)


def check_version(setup: Setup) -> Iterator[Finding]:
    """The API version's end date."""
    found = versions.status(setup.settings.api_base, setup.clock())
    status = {"retired": FAIL, "near": WARN}.get(found.state, OK)
    yield Finding("api version", status, versions.describe(found))


def check_clock(setup: Setup) -> Iterator[Finding]:
    """The local clock against the API's ``Date`` (expiry is counted on the local clock)."""
    if setup.api_date is None:
        yield Finding("clock", WARN, "not checked: no answer from the Graph API (see above)", network=True)
        return
    try:
        skew = setup.clock() - email.utils.parsedate_to_datetime(setup.api_date)
    except (TypeError, ValueError):
        yield Finding("clock", WARN, "not checked: the API's Date header is malformed", network=True)
        return
    seconds = abs(skew.total_seconds())
    way = "ahead of" if skew > timedelta(0) else "behind"
    if abs(skew) <= SKEW_WARNING:
        yield Finding("clock", OK, f"agrees with the Graph API's (within {seconds:.0f} s)", network=True)
        return
    status = FAIL if abs(skew) > SKEW_BROKEN else WARN
    yield Finding("clock", status, f"{seconds:.0f} s {way} the Graph API's Date; media ID expiry is "
                  "counted on it: sync the clock (e.g. timedatectl set-ntp true)", network=True)


def check_folder(setup: Setup) -> Iterator[Finding]:
    """The download folder: writable, or creatable."""
    yield _writable("download folder", Path(setup.settings.blob_dir), "MEDIA_REGISTRY_BLOB_DIR")


def check_archive(setup: Setup) -> Iterator[Finding]:
    """Where the archive worker keeps inbound files: the folder writable, or the bucket reachable."""
    settings = setup.settings
    if not settings.archive:
        yield Finding("archive", OK, "in the download folder (MEDIA_REGISTRY_ARCHIVE is not set)")
        return
    try:
        archive = open_archive(settings.archive, settings.blob_dir, endpoint_url=settings.s3_endpoint_url,
                               checksum=settings.s3_checksum, timeout=min(settings.timeout, 15.0))
        if isinstance(archive, Path):
            yield _writable("archive", archive, "MEDIA_REGISTRY_ARCHIVE")
            return
        archive.reach()
    except MediaRegistryError as exc:
        yield Finding("archive", FAIL, str(exc), network=settings.archive.startswith("s3://"))
        return
    yield Finding("archive", OK, f"{archive.url} reachable", network=True)


def check_webhooks(setup: Setup) -> Iterator[Finding]:
    """The two secrets the webhook endpoint needs (their values are never shown)."""
    secrets = {"WHATSAPP_APP_SECRET": setup.settings.app_secret,
               "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN": setup.settings.webhook_verify_token}
    unset = [name for name, value in secrets.items() if value is None]
    if not unset:
        yield Finding("webhooks", OK, "app secret and verify token set")
    elif len(unset) == len(secrets):
        yield Finding("webhooks", WARN, "not configured, so /v1/webhooks/whatsapp answers 503; to receive "
                      "Meta's webhooks set WHATSAPP_APP_SECRET and MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN")
    else:
        yield Finding("webhooks", WARN, f"{unset[0]} is not set, so /v1/webhooks/whatsapp answers 503 "
                      f"{'to deliveries' if unset[0] == 'WHATSAPP_APP_SECRET' else 'to the handshake'}; set it")


def _writable(check: str, folder: Path, setting: str) -> Finding:
    fix = f"fix its permissions or set {setting}"
    if folder.exists() and not folder.is_dir():
        return Finding(check, FAIL, f"{folder} is not a folder; {fix}")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return Finding(check, FAIL, f"{existing} is not writable ({exc.strerror}); {fix}")
    made = "" if existing == folder else " (created on the first download)"
    return Finding(check, OK, f"{folder} writable{made}")


def check_daemon(setup: Setup) -> Iterator[Finding]:
    """A daemon holding the registry's lock, and when an ID was last refreshed."""
    if setup.facts is None or not setup.facts.exists or setup.facts.pending:
        return  # nothing to hold, or opening it would upgrade it: the registry line says so
    try:
        store = open_store(setup.settings.db, create=False, busy_timeout=setup.settings.busy_timeout,
                           host_id=setup.settings.host_id)
    except MediaRegistryError as exc:
        yield Finding("daemon", FAIL, str(exc))
        return
    try:
        refreshed = last_event(store, "refresh")
        last = f"last refreshed an ID at {refreshed:%Y-%m-%d %H:%M:%S} UTC" if refreshed else "no ID refreshed yet"
        try:
            with store.backend.daemon_lock():
                held = False
        except RegistryLocked:
            held = True
    finally:
        store.close()
    if held:
        yield Finding("daemon", OK, f"one holds the registry's lock; {last}")
    else:
        yield Finding("daemon", WARN, f"none is running, so IDs are refreshed only by `media-registry "
                      f"refresh`; run `media-registry daemon` (or `serve`); {last}")


def _read(setup: Setup, object_id: str, fields: str) -> dict[str, Any]:
    return setup.graph().get_object(object_id, fields, dated=setup.dated)


# The checks, in order, each a function of the Setup yielding its findings.
CHECKS: list[Check] = [check_registry, check_token, check_app, check_version, check_clock,
                       check_folder, check_archive, check_webhooks, check_daemon]


def diagnose(setup: Setup, checks: list[Check] | None = None) -> list[Finding]:
    """Every check's findings, secrets redacted, each message one line."""
    findings: list[Finding] = []
    try:
        for check in CHECKS if checks is None else checks:
            for finding in check(setup):
                findings.append(Finding(finding.check, finding.status, one_line(redact(finding.message)),
                                        finding.network))
    finally:
        setup.close()
    return findings


def settings_finding(load: Callable[[], Settings]) -> tuple[Settings | None, Finding]:
    """The settings, and the line that says whether they are valid."""
    try:
        settings = load()
    except MediaRegistryError as exc:
        return None, Finding("settings", FAIL, one_line(redact(str(exc))))
    return settings, Finding("settings", OK, "valid")


def doctor_command(args: argparse.Namespace) -> int:
    """``media-registry doctor``: print every finding; 1 when any check is broken."""
    from ..config import load_settings

    settings, first = settings_finding(lambda: load_settings(db=args.db))
    findings = [first, *([] if settings is None else diagnose(Setup(settings)))]
    broken = any(finding.status == FAIL for finding in findings)
    if args.json:
        print(json.dumps({"healthy": not broken, "checks": [finding.as_json() for finding in findings]},
                         ensure_ascii=False))
    else:
        for finding in findings:
            print(finding.line())
        if settings is not None:
            print(f"([network]: asked the Graph API at {settings.api_base}; the others are local)")
    return 1 if broken else 0
