"""Every error a user can cause: one clear line, no request where none is needed, and the
registry intact afterwards."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import (
    APIUnreachable,
    AuthError,
    ConfigError,
    MediaNotFound,
    MediaRegistry,
    MediaTooLarge,
    MislabelledMedia,
    RegistryCorrupt,
    RegistryLocked,
    SchemaTooNew,
    SourceNotFound,
    SourceUnreadable,
    UnsupportedMedia,
)
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import PNG

HOSTS = "MEDIA_REGISTRY_MEDIA_HOSTS"


def assert_intact(registry: MediaRegistry, make_file: Callable[..., Path]) -> None:
    registry_db.check_consistent(registry.settings.db)
    assert registry_db.count(registry.settings.db, "leases") == 0
    assert registry.get_or_upload(make_file("afterwards.png"))


def test_missing_file(registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path,
                      make_file: Callable[..., Path]) -> None:
    with pytest.raises(SourceNotFound, match=r"nope\.png: no such file; check the path"):
        registry.get_or_upload(tmp_path / "nope.png")
    assert api.count() == 0
    assert_intact(registry, make_file)


def test_directory(registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable, match="is a directory; pass a file"):
        registry.get_or_upload(tmp_path)
    assert api.count() == 0


def test_empty_file(registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path) -> None:
    (tmp_path / "empty.pdf").touch()
    with pytest.raises(UnsupportedMedia, match="empty.pdf: the file is empty"):
        registry.get_or_upload(tmp_path / "empty.pdf")
    assert api.count() == 0


def test_unsupported_type(registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path,
                          make_file: Callable[..., Path]) -> None:
    (tmp_path / "anim.gif").write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(UnsupportedMedia, match="anim.gif: content is image/gif, which WhatsApp does not accept"):
        registry.get_or_upload(tmp_path / "anim.gif")
    assert api.count() == 0
    assert_intact(registry, make_file)


def test_mislabelled_type(registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]) -> None:
    path = make_file("logo.png")
    with pytest.raises(MislabelledMedia, match="declared image/jpeg but the bytes are image/png"):
        registry.get_or_upload(path, mime_type="image/jpeg")
    assert api.count() == 0


def test_too_large(registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(sample_media(PNG))
    with open(path, "r+b") as file:
        file.truncate(5_000_001)  # sparse: no need to write 5 MB
    with pytest.raises(MediaTooLarge, match="5,000,001 bytes is over WhatsApp's 5,000,000-byte limit for image"):
        registry.get_or_upload(path)
    assert api.count() == 0


def test_bad_token(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI,
                   make_file: Callable[..., Path]) -> None:
    registry = make_registry(token="EAAwrongtoken123")
    with pytest.raises(AuthError, match="rejected the access token.*set a valid WHATSAPP_TOKEN") as caught:
        registry.get_or_upload(make_file("a.png"))
    assert "EAAwrongtoken123" not in str(caught.value)
    assert api.count() == 1  # never retried
    assert_intact(make_registry(), make_file)


def test_no_token_fails_only_when_an_upload_is_needed(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    path = make_file("a.png")
    media_id = make_registry().get_or_upload(path)
    tokenless = make_registry(token=None)
    assert tokenless.get_or_upload(path) == media_id
    with pytest.raises(AuthError, match="no access token: set WHATSAPP_TOKEN"):
        tokenless.get_or_upload(make_file("b.png"))


def test_no_phone_number(make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError, match="set WHATSAPP_PHONE_NUMBER_ID"):
        make_registry(phone_number_id=None).get_or_upload(make_file("a.png"))


def test_an_unknown_phone_number_is_named_not_taken_for_an_unknown_media_id(
        registry: MediaRegistry, make_file: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError, match=r"^phone number ID 999: the Graph API does not know it "
                       r"\(code 100, subcode 33\); check WHATSAPP_PHONE_NUMBER_ID") as caught:
        registry.get_or_upload(make_file("a.png"), phone_number_id="999")
    assert not isinstance(caught.value, MediaNotFound)
    assert_intact(registry, make_file)


def test_api_unreachable(make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]) -> None:
    registry = make_registry(api_base="http://127.0.0.1:9/v26.0", max_retries=1)
    with pytest.raises(APIUnreachable, match="cannot reach the Graph API.*check the network"):
        registry.get_or_upload(make_file("a.png"))
    assert registry_db.count(registry.settings.db, "media") == 0
    assert registry_db.count(registry.settings.db, "leases") == 0


def test_a_non_sqlite_file_at_the_db_path_is_left_untouched(
    make_registry: Callable[..., MediaRegistry], tmp_path: Path
) -> None:
    db = tmp_path / "notes.txt"
    db.write_bytes(b"my precious notes\n" * 100)
    before = db.read_bytes()
    with pytest.raises(RegistryCorrupt, match="is not an SQLite database \\(left untouched\\)"):
        make_registry(db=db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_registry_from_a_newer_version(make_registry: Callable[..., MediaRegistry], tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    make_registry(db=db).close()
    registry_db.set_user_version(db, 99)
    with pytest.raises(SchemaTooNew, match="schema version 99.*pip install -U media-registry"):
        make_registry(db=db)


def test_a_registry_locked_by_a_writer(make_registry: Callable[..., MediaRegistry],
                                       make_file: Callable[..., Path], tmp_path: Path) -> None:
    registry = make_registry(busy_timeout=0.2)
    path = make_file("a.png")
    with registry_db.write_lock(registry.settings.db), \
            pytest.raises(RegistryLocked, match="locked by another writer for over 0.2 s"):
        registry.get_or_upload(path)
    assert registry.get_or_upload(path)


def test_a_missing_db_folder(make_registry: Callable[..., MediaRegistry], tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist; create it first"):
        make_registry(db=tmp_path / "no" / "such" / "registry.db")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WHATSAPP_PHONE_NUMBER_ID", "+1 555", "invalid WHATSAPP_PHONE_NUMBER_ID: .*digits"),
        ("WHATSAPP_API_BASE", "graph.facebook.com", "invalid WHATSAPP_API_BASE: .*https://"),
        ("MEDIA_REGISTRY_TTL", "banana", "invalid MEDIA_REGISTRY_TTL"),
        ("MEDIA_REGISTRY_MIN_VALIDITY", "P40D", "MIN_VALIDITY must be shorter than MEDIA_REGISTRY_TTL"),
        ("MEDIA_REGISTRY_MAX_RETRIES", "-1", "invalid MEDIA_REGISTRY_MAX_RETRIES"),
        # Unsafe or malformed: refused at start, naming the variable (issue 12, items 2 and 9).
        (HOSTS, '["fbsbx.com"]', f"invalid {HOSTS}: 'fbsbx.com' is not a host suffix"),
        (HOSTS, '[""]', f"invalid {HOSTS}: '' is not a host suffix"),
        (HOSTS, '[".com"]', f"invalid {HOSTS}: '.com' is not a host suffix"),
        ("WHATSAPP_API_BASE", "http://graph.example.com/v26.0", "invalid WHATSAPP_API_BASE: .*clear text"),
        ("WHATSAPP_API_BASE", "http://10.0.0.8:8080/v26.0", "invalid WHATSAPP_API_BASE: .*127.0.0.1"),
        (HOSTS, ".example.com",
         r'invalid MEDIA_REGISTRY_MEDIA_HOSTS: not JSON; write a JSON list of strings, e.g. \[".fbsbx.com"'),
        ("MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER", "123=3600",
         "invalid MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER: not JSON; write a JSON object"),
        ("MEDIA_REGISTRY_BUSY_TIMEOUT", "inf", "invalid MEDIA_REGISTRY_BUSY_TIMEOUT"),
        ("MEDIA_REGISTRY_LEASE_SECONDS", "inf", "invalid MEDIA_REGISTRY_LEASE_SECONDS"),
        ("MEDIA_REGISTRY_TIMEOUT", "nan", "invalid MEDIA_REGISTRY_TIMEOUT"),
        ("MEDIA_REGISTRY_BUSY_TIMEOUT", "nan", "invalid MEDIA_REGISTRY_BUSY_TIMEOUT"),
        ("MEDIA_REGISTRY_DOWNLOAD_DEADLINE", "inf", "invalid MEDIA_REGISTRY_DOWNLOAD_DEADLINE"),
        # Finite but huge: overflowed a C int, a timestamp or a date at the first upload.
        ("MEDIA_REGISTRY_LEASE_SECONDS", "1e12", "invalid MEDIA_REGISTRY_LEASE_SECONDS: .*less than or equal"),
        ("MEDIA_REGISTRY_BUSY_TIMEOUT", "1e308", "invalid MEDIA_REGISTRY_BUSY_TIMEOUT: .*less than or equal"),
        ("MEDIA_REGISTRY_TIMEOUT", "1e308", "invalid MEDIA_REGISTRY_TIMEOUT: .*less than or equal"),
        ("MEDIA_REGISTRY_TTL", "P100000000D", "invalid MEDIA_REGISTRY_TTL: .*up to 36500 days"),
        ("MEDIA_REGISTRY_URL_REVALIDATE", "P100000000D", "invalid MEDIA_REGISTRY_URL_REVALIDATE: .*up to 36500"),
        ("WHATSAPP_TOKEN", "EAAG first\nsecond", "invalid WHATSAPP_TOKEN: .*without spaces or line breaks"),
        ("WHATSAPP_TOKEN", " \n", "invalid WHATSAPP_TOKEN: is empty; set it to the access token"),
        ("MEDIA_REGISTRY_USER_AGENT", "media-registry/0.1 (+https://pypi.org/)", "invalid MEDIA_REGISTRY_USER_AGENT"),
    ],
)
def test_bad_environment_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        MediaRegistry.from_env(db=tmp_path / "r.db")


def test_threads_hitting_errors_leave_no_lease(registry: MediaRegistry, api: FakeGraphAPI,
                                               make_file: Callable[..., Path]) -> None:
    path = make_file("contended.png")
    api.fail(status=400, code=100, message="Invalid parameter", times=100)
    errors: list[Exception] = []

    def send() -> None:
        try:
            registry.get_or_upload(path)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 8 and all("Invalid parameter" in str(e) for e in errors)
    assert registry_db.count(registry.settings.db, "leases") == 0
