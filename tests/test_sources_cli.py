"""The CLI with URL and standard-input sources, and ``invalidate``, run as real processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from file_server import FileServer
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, run_cli

DATA = sample_media("image/png", salt="cli sources")



def upload_stdin(data: bytes, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(CLI), "upload", *args, "-"], input=data, env=env, capture_output=True,
                          timeout=60)


def test_upload_url_and_stdin_print_one_line_each(cli_env: dict[str, str], api: FakeGraphAPI,
                                                  files: FileServer, tmp_path: Path) -> None:
    url = files.add("/card.png", DATA)
    signed = url + "?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIAX&size=large"
    result = run_cli("upload", signed, env=cli_env)
    assert result.returncode == 0, result.stderr
    media_id, status, shown = result.stdout.rstrip("\n").split("\t")
    assert (status, shown) == ("uploaded", url + "?size=large")
    assert "SECRET" not in result.stdout + result.stderr
    piped = upload_stdin(DATA, cli_env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode() == f"{media_id}\tcached\t-\n"
    path = tmp_path / "card.png"
    path.write_bytes(DATA)
    assert run_cli("upload", str(path), env=cli_env).stdout.startswith(f"{media_id}\tcached\t")
    assert api.uploads == 1


def test_upload_stdin_json_and_errors(cli_env: dict[str, str], api: FakeGraphAPI) -> None:
    piped = upload_stdin(sample_media("application/pdf", salt="json"), cli_env, "--json")
    assert piped.returncode == 0 and b'"status": "uploaded", "path": "-"' in piped.stdout
    bad = upload_stdin(b"GIF89a" + bytes(10), cli_env)
    assert bad.returncode == 1 and bad.stdout == b""
    assert bad.stderr.decode().splitlines() == [
        "media-registry: error: -: content is image/gif, which WhatsApp does not accept; convert it to "
        "JPEG or PNG images, WebP stickers, AAC, AMR, MP3, M4A or Opus audio, MP4 or 3GP video, PDF, "
        "Word, Excel, PowerPoint or plain-text documents"]
    unsafe = run_cli("upload", "http://example.com/a.png?X-Amz-Signature=SECRETSIG", env=cli_env)
    assert unsafe.returncode == 1 and "SECRET" not in unsafe.stderr
    assert unsafe.stderr.startswith("media-registry: error: http://example.com/a.png: only https:// URLs")


def test_a_gone_url_is_one_clear_line(cli_env: dict[str, str], files: FileServer) -> None:
    url = files.add("/gone.pdf", b"", status=404)
    result = run_cli("upload", url, env=cli_env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"media-registry: error: {url}: HTTP 404, the URL no longer serves a file; "
                             "check the URL\n")


def test_invalidate(cli_env: dict[str, str], api: FakeGraphAPI) -> None:
    media_id = upload_stdin(DATA, cli_env).stdout.decode().split("\t")[0]
    result = run_cli("invalidate", media_id, env=cli_env)
    assert result.returncode == 0 and result.stdout == f"{media_id}\tinvalidated\n"
    again = upload_stdin(DATA, cli_env).stdout.decode().split("\t")
    assert again[0] != media_id and again[1] == "uploaded"
    unknown = run_cli("invalidate", "999", env=cli_env)
    assert unknown.returncode == 1
    assert unknown.stderr == "media-registry: error: media ID 999: not in the registry; check the ID (see: ls)\n"
