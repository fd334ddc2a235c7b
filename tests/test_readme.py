"""The README's command-line session, run as written against `media-registry fake-api`: the
output printed there must be what the commands print (media IDs, times and folders aside)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from media_registry.testing import sample_media

from conftest import CLI, PDF, run_cli
from service_helpers import start_server

README = Path(__file__).parent.parent / "README.md"
SESSION_FOLDER = "/tmp/cli-readme/shop"  # where the README's session ran


def readme_session() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("In another, paste those three lines")
    return text[text.index("```\n", start) + 4:text.index("```", text.index("```\n", start) + 4)]


def normalised(text: str, folder: str) -> str:
    text = text.replace(folder, SESSION_FOLDER)
    text = re.sub(r"\b1\d{15}\b", "<media ID>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\dZ)?", "<time>", text)
    text = re.sub(r"db_bytes: +\d+", "db_bytes: <n>", text)
    # Contents first seen in the same second list by sha256, else by time: a loaded machine may
    # put a second between two uploads the README shows within one: compare rows sorted.
    return re.sub(r"(?m)(^\d{15}  .*\n)+", lambda rows: "".join(sorted(rows[0].splitlines(True))), text)


def test_the_readme_cli_session_prints_what_it_shows(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    (shop / "campaign" / "2026").mkdir(parents=True)
    for name, mime_type, size, salt in (("brochure.pdf", PDF, 48_000, "brochure"),
                                        ("logo.jpg", "image/png", 5_100, "logo"),
                                        ("campaign/2026/voice-note.ogg", "audio/ogg", 20_000, "voice"),
                                        ("campaign/2026/opening-hours.txt", "text/plain", 900, "hours")):
        (shop / name).write_bytes(sample_media(mime_type, size=size, salt=salt))  # the README's files
    (shop / "campaign" / "banner.gif").write_bytes(b"GIF89a" + bytes(64))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    env["PATH"] = f"{CLI.parent}{os.pathsep}{env['PATH']}"
    server = subprocess.Popen([str(CLI), "fake-api"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        base = next(line for line in iter(server.stdout.readline, "")  # type: ignore[union-attr]
                    if "WHATSAPP_API_BASE" in line).split("=", 1)[1].strip()
        origin = base.rsplit("/", 1)[0]
        shown = readme_session()
        commands = [line[2:] for line in shown.splitlines() if line.startswith("$ ")]
        script = "".join(f"echo {_quote('$ ' + c)}\n{c.replace('http://127.0.0.1:8765', origin)} 2>&1\n"
                         for c in commands)
        ran = subprocess.run(["bash", "-c", script], cwd=shop, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert normalised(ran.stdout, str(shop)) == normalised(shown, str(shop))


@pytest.mark.sqlite_only  # the example's commands, not the backend, are under test
def test_the_readme_pending_delete_example_prints_what_it_shows(cli_env: dict[str, str], tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("`delete` says so and exits 1:")
    shown = "".join(line.strip() + "\n" for line in text[start:text.index("A later explicit", start)].splitlines()
                    if line.strip() and not line.strip().startswith(("```", "`delete`")))
    (tmp_path / "brochure.pdf").write_bytes(sample_media(PDF, salt="brochure"))
    env = {**cli_env, "PATH": f"{CLI.parent}{os.pathsep}{os.environ['PATH']}"}
    assert run_cli("upload", "brochure.pdf", env=env, cwd=tmp_path).returncode == 0
    script = "".join(f"echo {_quote(line)}\n{line[2:]} 2>&1\n" for line in shown.splitlines()
                     if line.startswith("$ "))
    ran = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert normalised(ran.stdout, str(tmp_path)) == normalised(shown, str(tmp_path))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.sqlite_only  # the session's commands, not the backend, are under test
def test_the_readme_webhook_session_prints_what_it_shows(cli_env: dict[str, str], tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("the suite runs this session as written")
    shown = text[text.index("```\n", start) + 4:text.index("```", text.index("```\n", start) + 4)]
    secrets = dict(re.findall(r"(WHATSAPP_APP_SECRET|MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN)=(\S+)", shown))
    (tmp_path / "photo.jpg").write_bytes(sample_media("image/jpeg", size=20000, salt="photo"))
    env = {**cli_env, **secrets, "MEDIA_REGISTRY_BLOB_DIR": str(tmp_path / "media-blobs"),
           "PATH": f"{CLI.parent}{os.pathsep}{os.environ['PATH']}"}
    server = start_server(env, tmp_path / "serve.log")
    try:
        script = "".join(f"echo {_quote('$ ' + command.splitlines()[0])}\n"
                         f"{{ {_runnable(command, server.url)}\n}} 2>&1\n"
                         for command in _commands(shown) if not command.startswith("media-registry serve"))
        ran = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        assert server.stop() == 0
    expected = "".join(line + "\n" for line in shown.splitlines()
                       if not line.startswith(("$ media-registry serve", "  ", "{\"object\"", "JSON")))
    assert normalised(ran.stdout, str(tmp_path)) == normalised(expected, str(tmp_path))


def _commands(session: str) -> list[str]:
    """The session's commands: each ``$ `` line, with the lines of its here-document."""
    commands: list[str] = []
    lines = iter(session.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            if command.endswith("<<JSON"):
                body = list(iter(lambda: next(lines), "JSON"))
                command = "\n".join([command, *body, "JSON"])
            commands.append(command)
    return commands


def _runnable(command: str, url: str) -> str:
    """A command of the session against the test's service; ``ls`` and ``stats`` once the
    archive worker is done (it runs beside the service, woken by the delivery)."""
    command = command.replace("http://127.0.0.1:8080", url)
    if command.startswith(("ls ", "media-registry stats")):
        wait = "for _ in $(seq 600); do media-registry stats | grep -q 'inbound_archived: 1' && break; sleep 0.1; done"
        return f"{wait}\n{command}"
    return command
