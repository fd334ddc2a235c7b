"""`{"path": ...}` in the service: walked from the allowed folder's descriptor, never reopened
by name. The app runs in this process (FastAPI over httpx's ASGI transport, the FakeGraphAPI
behind it) so that an audit hook sees every file the service opens, and swaps a folder for a
symlink at the very moment the service is about to open the next step."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from media_registry import AsyncMediaRegistry, MediaRegistry
from media_registry.app.metrics import Monitor
from media_registry.app.service import Options, create_app
from media_registry.store import NewMedia, Recorded
from media_registry.testing import FakeGraphAPI, sample_media
from test_async import ThreadsOfCalls, file_events_under

from conftest import PDF

Hook = Callable[[str, int], None]
_hooks: list[Hook] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _hooks and isinstance(args[0], str):
        for hook in list(_hooks):
            hook(args[0], args[2] if len(args) > 2 and isinstance(args[2], int) else 0)


sys.addaudithook(_audit)  # for the whole run (hooks cannot be removed); idle without a hook


@pytest.fixture
def on_open() -> Iterator[Callable[[Hook], None]]:
    """Call a function with (name, flags) of every file opened in this process, for one test."""
    yield _hooks.append
    _hooks.clear()


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """media/sub/brochure.pdf inside the allowed folder; outside/brochure.pdf, other bytes."""
    root, outside = tmp_path / "media", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "brochure.pdf").write_bytes(sample_media(PDF, salt="inside"))
    (outside / "brochure.pdf").write_bytes(sample_media(PDF, salt="secret"))
    return {"root": root, "outside": outside, "file": root / "sub" / "brochure.pdf"}


def in_process(api: FakeGraphAPI, tmp_path: Path, root: Path,
               send: Callable[[httpx.AsyncClient, AsyncMediaRegistry], Awaitable[list[httpx.Response]]]
               ) -> list[httpx.Response]:
    """The answers ``send`` gets from the service (allowed folder: ``root``) in this process."""

    async def run() -> list[httpx.Response]:
        async with AsyncMediaRegistry(db=tmp_path / "registry.db", token=api.token, api_base=api.base_url,
                                      phone_number_id=api.phone_number_id) as registry:
            app = create_app(registry, Monitor(registry), Options(allow_roots=(root.resolve(),)))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://service") as client:
                return await send(client, registry)

    return asyncio.run(run())


def post_paths(api: FakeGraphAPI, tmp_path: Path, root: Path, *paths: str) -> list[httpx.Response]:
    """POST each ``{"path": ...}`` to the service, in order."""

    async def send(client: httpx.AsyncClient, _registry: AsyncMediaRegistry) -> list[httpx.Response]:
        return [await client.post("/v1/media", json={"path": path}) for path in paths]

    return in_process(api, tmp_path, root, send)


def swap_for_outside_link(folder: Path, outside: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(outside)


def test_a_folder_swapped_for_an_outside_symlink_after_the_check_is_not_read(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path], on_open: Callable[[Hook], None]
) -> None:
    root, inside = layout["root"], layout["file"].read_bytes()
    by_name: list[str] = []

    def swap_before_the_file_is_opened(name: str, _flags: int) -> None:
        if name.endswith("brochure.pdf") and not (root / "sub").is_symlink():
            swap_for_outside_link(root / "sub", layout["outside"])
        if name.startswith(str(root.resolve()) + "/"):
            by_name.append(name)

    on_open(swap_before_the_file_is_opened)
    answer = post_paths(api, tmp_path, root, str(layout["file"]))[0]
    assert (root / "sub").is_symlink()  # the swap happened, in the middle of the request
    assert by_name == []  # nothing under the folder was opened by its full name
    assert answer.status_code == 200, answer.text
    assert answer.json()["sha256"] == hashlib.sha256(inside).hexdigest()
    assert [media.data for media in api.media.values()] == [inside]


def test_a_folder_swapped_for_an_outside_symlink_before_the_walk_reaches_it_is_403(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path], on_open: Callable[[Hook], None]
) -> None:
    root = layout["root"]

    def swap_before_sub_is_opened(name: str, _flags: int) -> None:
        if (name == "sub" or name.endswith("/sub/brochure.pdf")) and not (root / "sub").is_symlink():
            swap_for_outside_link(root / "sub", layout["outside"])

    on_open(swap_before_sub_is_opened)
    answer = post_paths(api, tmp_path, root, str(layout["file"]))[0]
    assert (root / "sub").is_symlink()
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["type"] == "AccessDenied" and api.uploads == 0


def test_symlinks_that_stay_inside_the_folder_are_followed(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path]
) -> None:
    root = layout["root"]
    (root / "current").symlink_to("sub/")  # a deploy's current -> release/
    (root / "pinned").symlink_to(root.resolve() / "sub")  # absolute, naming the folder itself
    (root / "sub" / "latest.pdf").symlink_to("../current/brochure.pdf")
    answers = post_paths(api, tmp_path, root, f"{root}/current/brochure.pdf",
                         f"{root}/pinned/brochure.pdf", f"{root}/sub/latest.pdf",
                         f"{root}/current/../sub/brochure.pdf")
    assert [answer.status_code for answer in answers] == [200] * 4, [a.text for a in answers]
    assert [answer.json()["status"] for answer in answers] == ["uploaded"] + ["cached"] * 3
    assert api.uploads == 1


def test_every_way_out_of_the_folder_is_403_and_odd_files_are_400(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path]
) -> None:
    root, outside = layout["root"], layout["outside"]
    (root / "out").symlink_to(outside)
    (root / "up").symlink_to("..")
    (root / "sub" / "far.pdf").symlink_to(outside / "brochure.pdf")
    (root / "loop").symlink_to("loop")
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    os.mkfifo(root / "pipe.pdf")
    refused = [f"{root}/out/brochure.pdf", f"{root}/up/outside/brochure.pdf", f"{root}/sub/far.pdf",
               f"{root}/sub/../../outside/brochure.pdf"]
    odd = [f"{root}/loop", f"{root}/a/brochure.pdf", f"{root}/pipe.pdf", f"{root}/sub",
           f"{root}/sub/brochure.pdf/x"]
    answers = post_paths(api, tmp_path, root, *refused, *odd)
    statuses = [(answer.status_code, answer.json()["error"]["type"]) for answer in answers]
    assert statuses[:len(refused)] == [(403, "AccessDenied")] * len(refused)
    assert statuses[len(refused):] == [(400, "InputError"), (400, "InputError"), (400, "SourceUnreadable"),
                                       (400, "SourceUnreadable"), (400, "SourceNotFound")]
    assert "symlinks (a loop)" in answers[len(refused)].json()["error"]["message"]
    assert api.uploads == 0


def test_a_file_named_with_a_trailing_slash_or_dot_is_not_a_directory(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path]
) -> None:
    root = layout["root"]
    (root / "link.pdf").symlink_to("sub/brochure.pdf")
    named = [f"{root}/sub/brochure.pdf/", f"{root}/sub/brochure.pdf/.", f"{root}/sub/brochure.pdf/./",
             f"{root}/link.pdf/"]
    answers = post_paths(api, tmp_path, root, *named, f"{root}/sub/")
    for path, answer in zip(named, answers):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "SourceNotFound"
        assert answer.json()["error"]["message"].startswith(f"{path}: not a directory")
    assert answers[-1].json()["error"]["message"] == f"{root}/sub/: is a directory; name a file"
    assert api.uploads == 0


def test_a_file_that_changes_between_its_hash_and_its_upload_is_409(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path], on_open: Callable[[Hook], None]
) -> None:
    path = layout["file"]
    rewrite = sample_media(PDF, salt="rewrite")[:path.stat().st_size].ljust(path.stat().st_size, b"\0")

    def rewrite_in_place_when_the_upload_copy_is_made(name: str, _flags: int) -> None:
        if os.path.basename(name).startswith("media-registry-") and path.read_bytes() != rewrite:
            with open(path, "r+b") as file:  # the same inode: the service's descriptor sees it
                file.write(rewrite)

    on_open(rewrite_in_place_when_the_upload_copy_is_made)
    answer = post_paths(api, tmp_path, layout["root"], str(path))[0]
    assert path.read_bytes() == rewrite  # the rewrite happened, in the middle of the request
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["type"] == "SourceChanged" and api.uploads == 0


def test_content_deleted_after_its_upload_but_before_it_is_recorded_is_409(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample_media(PDF, salt="late delete")

    async def send(client: httpx.AsyncClient, registry: AsyncMediaRegistry) -> list[httpx.Response]:
        record_upload = registry.store.record_upload

        def deleted_just_before(media: NewMedia, owner: str) -> Recorded:
            # The upload is done: a delete lands before it is recorded (the answer is made
            # from what the registry's call learned, so this is the last moment to catch it).
            with MediaRegistry(db=tmp_path / "registry.db", token=api.token,
                               api_base=api.base_url) as other:
                other.delete(media.sha256)
            return record_upload(media, owner)

        monkeypatch.setattr(registry.store, "record_upload", deleted_just_before)
        return [await client.post("/v1/media", content=data)]

    answer = in_process(api, tmp_path, layout["root"], send)[0]
    assert api.uploads == 1 and api.count("DELETE") == 1
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["type"] == "ContentDeleted"


def test_no_request_does_store_or_file_work_on_the_event_loop(
    api: FakeGraphAPI, tmp_path: Path, layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))  # the body's spool lands where watched
    data = sample_media(PDF, salt="threads")
    sha256 = hashlib.sha256(data).hexdigest()
    path = layout["root"] / "threads.pdf"
    path.write_bytes(sample_media(PDF, salt="by path"))
    seen: dict[str, Any] = {}

    async def send(client: httpx.AsyncClient, registry: AsyncMediaRegistry) -> list[httpx.Response]:
        calls = registry.store = ThreadsOfCalls(registry.store)  # type: ignore[assignment]
        with file_events_under(tmp_path) as files:
            answers = [await client.post("/v1/media", content=data),  # a miss: spooled, uploaded
                       await client.post("/v1/media", content=data),  # the hash lookup's hit
                       await client.post("/v1/media", json={"path": str(path)}),
                       await client.get(f"/v1/media/{sha256}")]
            media_id = answers[0].json()["media_id"]
            answers.append(await client.post(f"/v1/media/{media_id}/invalidate"))
        seen.update(calls=calls, files=files, loop=threading.get_ident())
        return answers

    answers = in_process(api, tmp_path, layout["root"], send)
    assert [answer.status_code for answer in answers] == [200] * 5, [a.text for a in answers]
    assert [answer.json().get("status") for answer in answers[:3]] == ["uploaded", "cached", "uploaded"]
    assert api.uploads == 2  # the body was hashed once: its second POST is the hash lookup's hit
    calls, loop = seen["calls"], seen["loop"]
    assert {"take_lease", "record_upload", "invalidate_media", "events"} <= {name for name, _ in calls.calls}
    assert calls.on(loop) <= {"content_rows", "current_media"}  # the hash lookup and GET: cache hits, as documented
    assert {"open", "os.remove"} <= {event for event, _ in seen["files"]}
    assert [event for event, thread in seen["files"] if thread == loop] == []
