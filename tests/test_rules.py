"""The registry's rules as data: typed arguments, and flows stepped by hand, without a server
(as httpx tests its auth flows): each effect is answered by the test itself."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from media_registry import ConfigError, GraphAPIError, MediaRegistry
from media_registry.config import Settings
from media_registry.registry import AsyncMediaRegistry, Outcome
from media_registry.rules.context import SettingsArgs
from media_registry.rules.effects import Blocking, Effect, Flow, Sleep, Upload

EXPLICIT = {"db", "token", "phone_number_id"}


def _members(hint: Any) -> set[Any]:
    return set(get_args(hint)) if get_origin(hint) in (Union, type(int | str)) else {hint}


def test_the_settings_arguments_are_the_settings_fields_with_their_types() -> None:
    hints = get_type_hints(SettingsArgs)
    assert set(hints) == set(Settings.model_fields) - EXPLICIT
    for name, hint in hints.items():
        assert type(None) in _members(hint), name  # None keeps the environment's value
        assert _members(Settings.model_fields[name].annotation) <= _members(hint), name


def test_a_misspelt_setting_is_refused_by_mypy_and_at_run_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token"):
        MediaRegistry(db=tmp_path / "r.db", tokn="abc")  # type: ignore[call-arg]
    snippet = tmp_path / "misspelt.py"
    snippet.write_text("from media_registry import MediaRegistry\n"
                       "MediaRegistry(db='x.db', tokn='abc')\n"
                       "MediaRegistry(db='x.db', ttl_minutes=5)\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
                            capture_output=True, text=True)
    assert result.stdout.count('Unexpected keyword argument "') == 2, result.stdout


def step(flow: Flow[Any], answer: Callable[[Effect[Any]], object]) -> tuple[Any, list[str]]:
    """Drive ``flow`` by hand: (what it returned, the names of the effects it asked for)."""
    asked: list[str] = []
    value: object = None
    error: BaseException | None = None
    while True:
        try:
            effect = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value, asked
        asked.append(type(effect).__name__)
        value, error = None, None
        try:
            value = answer(effect)
        except Exception as exc:
            error = exc


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[MediaRegistry]:
    """A registry whose API is never reached: the tests answer its flows' effects."""
    with MediaRegistry(db=tmp_path / "r.db", token="test-token", phone_number_id="123") as registry:
        yield registry


def test_an_upload_flow_asks_for_the_lease_the_upload_and_the_record(
    offline: MediaRegistry, make_file: Callable[..., Path],
) -> None:
    path = make_file("offline.png")
    flow = offline.sourcing.lookup(path, None, None)
    assert not isinstance(flow, Outcome)

    def answer(effect: Effect[Any]) -> object:
        if isinstance(effect, Upload):
            assert (effect.path, effect.mime_type, effect.phone_number_id) == (str(path), "image/png", "123")
            return "4242"
        if isinstance(effect, Sleep):
            return None
        assert isinstance(effect, Blocking)
        return effect.work()

    outcome, asked = step(flow, answer)
    assert outcome == ("4242", True) and outcome.status == "uploaded"
    assert outcome.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert outcome.mime_type == "image/png" and outcome.expires_at is not None
    # examine (hash), take the lease, take an upload slot, upload, check the file is unchanged, record it
    assert [name for name in asked if name != "Sleep"] == ["Hashing", "Blocking", "Blocking", "Upload", "Blocking",
                                                           "Blocking"]
    assert offline.get_or_upload_with_status(path) == ("4242", False)  # served from the record


def test_a_failed_upload_releases_the_lease_and_reaches_the_caller(
    offline: MediaRegistry, make_file: Callable[..., Path],
) -> None:
    path = make_file("refused.png")
    flow = offline.sourcing.lookup(os.fspath(path), None, None)
    assert not isinstance(flow, Outcome)
    released: list[str] = []

    def answer(effect: Effect[Any]) -> object:
        if isinstance(effect, Upload):
            raise GraphAPIError("refused", status=400, code=131053)
        if isinstance(effect, Blocking):
            name = getattr(effect.work, "func", effect.work).__name__
            released.extend([name] if name == "release_lease" else [])
            return effect.work()
        return None

    with pytest.raises(GraphAPIError, match="refused"):
        step(flow, answer)
    assert released == ["release_lease"]


def test_the_public_classes_have_one_base_of_their_own() -> None:
    for cls in (MediaRegistry, AsyncMediaRegistry):
        ours = [base for base in cls.__mro__[1:] if base.__module__.startswith("media_registry")]
        assert [base.__name__ for base in ours] == ["_Registry"]
