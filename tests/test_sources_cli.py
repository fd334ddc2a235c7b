"""The CLI with URL and standard-input sources, and ``invalidate``, run as real processes."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import termios
import threading
import time
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
    pasted = run_cli("download", "https://x.example.com/a.png?X-Amz-Signature=SECRETSIG", env=cli_env)
    assert pasted.returncode == 1 and pasted.stderr == (  # refused as not an ID, never echoed
        "media-registry: error: a URL is not a media ID (digits only); check the value given\n")
    unknown_url = run_cli("invalidate", "https://x.example.com/a.png?X-Amz-Signature=SECRETSIG", env=cli_env)
    assert unknown_url.returncode == 1 and unknown_url.stderr == (
        "media-registry: error: https://x.example.com/a.png: no current media ID in the registry; "
        "check the URL (see: media-registry ls)\n")


def test_show_invalidate_and_delete_take_a_url_source(cli_env: dict[str, str], api: FakeGraphAPI,
                                                      files: FileServer) -> None:
    url = files.add("/card.png", DATA)
    media_id = run_cli("upload", url + "?X-Amz-Signature=ONE", env=cli_env).stdout.split("\t")[0]
    shown = run_cli("show", "--json", url + "?X-Amz-Signature=TWO", env=cli_env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["media_id"] == media_id
    invalidated = run_cli("invalidate", url, env=cli_env)
    assert invalidated.returncode == 0 and invalidated.stdout == f"{media_id}\tinvalidated\n"
    again = run_cli("upload", url, env=cli_env).stdout.split("\t")
    assert again[0] != media_id and again[1] == "uploaded" and api.uploads == 2
    deleted = run_cli("delete", url, env=cli_env)
    assert deleted.returncode == 0 and f"deleted   {again[0]}\n" in deleted.stdout
    assert not api.live(again[0])


def test_show_invalidate_and_delete_refuse_a_url_with_credentials_as_upload_does(
        cli_env: dict[str, str], api: FakeGraphAPI, files: FileServer) -> None:
    url = files.add("/card.png", DATA)
    media_id = run_cli("upload", url, env=cli_env).stdout.split("\t")[0]
    credentialed = url.replace("http://", "http://alice:s3cret@")
    refusal = f"media-registry: error: {url}: a URL with user:password@ is not taken as a source"
    for command in ("upload", "show", "invalidate", "delete"):
        result = run_cli(command, credentialed, env=cli_env)
        assert (result.returncode, result.stdout) == (1, ""), (command, result.stdout)
        assert result.stderr.startswith(refusal) and result.stderr.count("\n") == 1, result.stderr
    assert api.live(media_id) and api.uploads == 1
    assert run_cli("upload", url, env=cli_env).stdout.split("\t")[:2] == [media_id, "cached"]


def test_stdin_twice_or_closed_is_one_clear_line(cli_env: dict[str, str], api: FakeGraphAPI) -> None:
    twice = subprocess.run([str(CLI), "upload", "-", "-"], input=DATA, env=cli_env, capture_output=True,
                           timeout=60)
    closed = subprocess.run([str(CLI), "upload", "-"], stdin=subprocess.DEVNULL, env=cli_env,
                            capture_output=True, timeout=60, pass_fds=(), preexec_fn=lambda: os.close(0))
    for result in (twice, closed):
        assert result.returncode == 2 and result.stdout == b""
        assert result.stderr.decode().splitlines() == [
            "media-registry: error: -: standard input is read once, and must be open; "
            "give - once and pipe the content in"]
    assert api.uploads == 0


def test_show_and_delete_of_a_signed_url_never_echo_its_signature(cli_env: dict[str, str]) -> None:
    signed = "https://bucket.example.com/a.png?X-Amz-Signature=SECRETSIG&v=2"
    assert run_cli("init", env=cli_env).returncode == 0
    for command in ("show", "delete"):
        result = run_cli(command, signed, env=cli_env)
        assert result.returncode == 1 and "SECRETSIG" not in result.stdout + result.stderr
        assert result.stderr.startswith(
            "media-registry: error: https://bucket.example.com/a.png?v=2: not in the registry")


def unread(descriptor: int) -> int:
    """How many bytes wait in a pipe, not yet read."""
    return struct.unpack("i", fcntl.ioctl(descriptor, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_upload_stdin_from_a_non_blocking_pipe_reads_it_to_the_end(cli_env: dict[str, str],
                                                                   api: FakeGraphAPI) -> None:
    data = sample_media("application/pdf", size=4_000_000, salt="non-blocking stdin")
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # as a writer may leave it: stdin then reads empty when drained
    upload = subprocess.Popen([str(CLI), "upload", "-"], stdin=read_end, env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed() -> None:  # in blocks, letting the reader drain the pipe between them
        try:
            with os.fdopen(write_end, "wb") as pipe:
                for start in range(0, len(data), 1 << 18):
                    pipe.write(data[start:start + (1 << 18)])
                    pipe.flush()
                    while unread(read_end) and upload.poll() is None:
                        time.sleep(0.005)
                    time.sleep(0.005)  # the reader now finds the pipe empty
        except OSError:
            pass  # the reader stopped early: the asserts below say how

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        stdout, stderr = upload.communicate(timeout=60)
    finally:
        os.close(read_end)  # a writer still blocked (the reader stopped early) gets EPIPE
        writer.join(timeout=60)
    assert upload.returncode == 0, stderr
    media_id, status, shown = stdout.decode().rstrip("\n").split("\t")
    assert (status, shown) == ("uploaded", "-")
    assert len(api.media[media_id].data) == len(data) and api.media[media_id].data == data
