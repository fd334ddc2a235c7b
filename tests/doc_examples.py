"""The examples of README.md and the site's pages, found and run: ``python`` blocks by Sybil,
and shell sessions (blocks of ``$ `` lines, each followed by what it prints) by the parser
here, in a terminal of the page's own: a folder holding the files the pages name, the local
Graph API's export lines, and ``serve`` started in the background where a session starts it.

A block preceded by ``<!-- save as: NAME -->`` is written to that file (a script the next
session runs). A block that cannot run here carries a visible ``*not run: reason*`` line right before it; an
HTML comment ``<!-- before: COMMAND -->`` right before a block runs that command first, unseen
(what the prose says is there, made so). What a session prints is compared with what it shows,
after :func:`normalised` (media IDs, ports, times, folders and durations vary from run to run).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from file_server import FileServer
from media_registry.app.fake_api_command import export_lines, local_api
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, PDF
from service_helpers import Server, start_server

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```\n", re.S | re.M)
NOT_RUN = re.compile(r"^ *\*not run: (?P<reason>[^*]+)\*\n\n?\Z", re.M)
SAVE = re.compile(r"<!-- save as: (?P<name>\S+) -->\n\n?\Z")
BEFORE = re.compile(r"<!-- before: (?P<command>.*?) -->\n\n? *\Z", re.S)
MEDIA_ID = re.compile(r"\b1\d{15}\b")
READS = re.compile(r"(ls|cat) |media-registry (stats|ls|show|inbox)\b")  # read, never change
PROMPT = re.compile(r"^(?:[\w-]+)?\$ ", re.M)
SHOWN_API = "http://127.0.0.1:8765"  # the local Graph API's address as the pages show it
SHOWN_SERVICE = "http://127.0.0.1:8080"  # the service's
# Fleets' databases: the registry's, and the one `migrate` copies into
SHOWN_DATABASES = ("postgresql://media:choose-a-password@127.0.0.1:5432/media",
                   "postgresql://media:choose-a-password@127.0.0.1:5432/fleet")
SHOWN_FILES = "http://127.0.0.1:46793"  # a local file server standing in for a CDN or S3


@dataclass
class Block:
    """A fenced block of a page: its language, text, the line it starts on, and its markers."""

    page: Path
    line: int
    lang: str
    body: str
    not_run: str | None = None
    before: str | None = None
    save_as: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_session(self) -> bool:
        return PROMPT.match(self.body) is not None

    @property
    def is_example(self) -> bool:
        """Python, or a shell session, or shell commands: what a reader would run."""
        return self.lang in ("python", "sh") or self.is_session


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order, with the markers written right before it."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        preceding = text[max(0, match.start() - 400):match.start()]
        not_run, before, save = NOT_RUN.search(preceding), BEFORE.search(preceding), SAVE.search(preceding)
        body = re.sub(f"(?m)^{match['indent']}", "", match["body"])
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, match["lang"], body,
                           not_run["reason"] if not_run else None, before["command"] if before else None,
                           save["name"] if save else None))
    return found


def make_files(folder: Path) -> None:
    """The files the pages' examples name, as their prose describes them."""
    files = {"brochure.pdf": (PDF, 48_000, "brochure"), "logo.jpg": ("image/png", 5_100, "logo"),
             "logo.png": ("image/png", 0, "logo.png"), "photo.jpg": ("image/jpeg", 20_000, "photo"),
             "banner.png": ("image/png", 0, "banner"), "menu.pdf": (PDF, 0, "menu"),
             "card.png": ("image/png", 0, "card"), "cards/summer.png": ("image/png", 0, "summer"),
             "invoice.pdf": (PDF, 0, "invoice"), "big-video.mp4": ("video/mp4", 0, "video"),
             "campaign/2026/voice-note.ogg": ("audio/ogg", 20_000, "voice"),
             "campaign/2026/opening-hours.txt": ("text/plain", 900, "hours")}
    for name, (mime_type, size, salt) in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(sample_media(mime_type, size=size, salt=salt))
    (folder / "campaign" / "banner.gif").write_bytes(b"GIF89a" + bytes(64))
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)


def normalised(text: str, folder: Path, origins: dict[str, str]) -> str:
    """``text`` with what varies between runs put in a fixed form, rows of one second sorted."""
    for actual, shown in origins.items():
        text = text.replace(actual, shown)
    text = text.replace(str(folder), "<folder>").replace("/srv/app", "<folder>")
    text = re.sub(r"/tmp/[\w./-]*?(?=/(?:brochure|logo|photo|banner|campaign|media-blobs|cards)\b)", "<folder>", text)
    text = re.sub(r"/tmp/media-registry-demo-\w+", "<demo folder>", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", text)
    text = MEDIA_ID.sub("<media ID>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(,\d+|(\.\d+)?Z)?)?", "<time>", text)
    text = re.sub(r"\d+ µs per call", "<n> µs per call", text)
    text = re.sub(r"SQLite \d+\.\d+\.\d+", "SQLite <version>", text)
    text = re.sub(r"(agrees with the Graph API.s \(within )\d+ s", r"\1<n> s", text)
    text = re.sub(r"(server_version: +)\S+", r"\1<version>", text)
    text = re.sub(r"(db_bytes: +)\d+", r"\1<n>", text)
    text = re.sub(r'("last_refresh_success":)[\d.]+', r"\1<t>", text)
    text = re.sub(r"(_seconds_sum|_timestamp_seconds) \S+", r"\1 <n>", text)
    return re.sub(r"(?m)(^\S+  \S+  .*\n)+", lambda rows: "".join(sorted(rows[0].splitlines(True))), text)


@dataclass
class Terminal:
    """A page's terminal: its folder, its environment, its local Graph API and services."""

    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    api: FakeGraphAPI | None = None
    servers: list[Server] = field(default_factory=list)
    files: FileServer | None = None
    origins: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # a media ID the page shows -> the run's
    databases: dict[str, str] = field(default_factory=dict)  # a PostgreSQL URL shown -> the run's
    hosts: dict[str, dict[str, str]] = field(default_factory=dict)  # app-1$: its shell's environment

    def start_api(self, command: str = "media-registry fake-api") -> list[str]:
        """The page's local Graph API (one per page), as ``command`` would start it; the lines
        it prints."""
        if self.api is None:
            numbers = [(phone, int(ttl) if ttl else None) for phone, _, ttl in
                       (spec.partition(":") for spec in re.findall(r"--phone-number-id (\S+)", command))]
            self.api = local_api(0, numbers).start()
            self.origins[self.api.origin] = SHOWN_API
            for line in export_lines(self.api):
                if line.startswith("export "):
                    name, value = line[len("export "):].split("=", 1)
                    self.env[name] = shlex.split(value)[0]
        return [*export_lines(self.api), f"local Graph API serving at {self.api.origin} (Graph API "
                f"{self.api.version} by default; any version answers); kill an ID: curl -X POST "
                f"{self.api.origin}/_fake/media/ID/kill; Ctrl-C stops it"]

    def close(self) -> None:
        if self.files is not None:
            self.files.stop()
        for server in self.servers:
            server.stop()
        if self.api is not None:
            self.api.stop()

    def run(self, block: Block) -> tuple[str, str]:
        """Run a session; what it printed and what the page shows, both normalised."""
        if self.api is None and not re.match(r"\S*\$ (\.venv/bin/)?media-registry fake-api", block.body):
            self.start_api()  # as if started in another terminal, its export lines pasted here
        if block.before:
            self.shell(block.before, check=True)
        shown, printed = [], []
        for prompt, command, output in commands(block.body):
            shown.append(f"{prompt}$ {command}\n")
            printed.append(f"{prompt}$ {command}\n")
            if re.match(r"(\.venv/bin/)?media-registry fake-api\b", command):
                shown.append(output)
                printed += [line + "\n" for line in self.start_api(command)]
            elif command.startswith("media-registry serve"):
                self.start_service(command)  # its log, with times and pids, is not compared
            else:
                shown.append(output)
                printed.append(self.shell(command, host=prompt))
                if self.servers and READS.match(command):
                    printed[-1] = self.settled(command, printed[-1], output)
                self.ids.update(zip(MEDIA_ID.findall(output), MEDIA_ID.findall(printed[-1])))
        return (normalised("".join(printed), self.folder, self.origins),
                normalised("".join(shown), self.folder, self.origins))

    def settled(self, command: str, printed: str, shown: str) -> str:
        """What a read prints once the service's background work (the archive worker, woken by
        a delivery) has shown up in it, polled for 30 seconds at most."""
        deadline = time.monotonic() + 30
        while self.normal(printed) != self.normal(shown) and time.monotonic() < deadline:
            printed = self.shell(command)
        return printed

    def normal(self, text: str) -> str:
        return normalised(text, self.folder, self.origins)

    def use_postgres(self, shown: str, url: str) -> None:
        """Run the page's PostgreSQL URL ``shown`` against ``url``; show it as the page does."""
        self.databases[shown] = url
        self.origins[re.sub(r"//([^:@/]+):[^@]*@", r"//\1@", url)] = re.sub(r":[^:@/]*@", "@", shown)
        self.origins[str(self.folder.parent / "walk")] = "/tmp/walk"

    def start_service(self, command: str) -> None:
        """``serve`` in the background, as the session starts it (its log is not compared)."""
        flags = [flag.replace("/tmp/shop", str(self.folder)) for flag in shlex.split(command)[2:] if flag != "&"]
        server = start_server(self.env, self.folder.parent / f"serve-{len(self.servers)}.log", *flags)
        self.servers.append(server)
        self.origins[server.url] = SHOWN_SERVICE

    def save(self, name: str, text: str) -> None:
        """A file the page tells the reader to save, with the addresses of this run."""
        (Path(self.env["PWD"]) / name).write_text(self.actual(text))

    def actual(self, text: str) -> str:
        """``text`` with the addresses, media IDs and folder the page shows made this run's."""
        if SHOWN_FILES in text and self.files is None:
            self.files = FileServer()
            for path in self.folder.rglob("*"):
                if path.is_file():
                    self.files.add(f"/{path.relative_to(self.folder)}", path.read_bytes())
            self.origins[self.files.url("")] = SHOWN_FILES
        for actual, shown in self.origins.items():
            text = text.replace(shown, actual)
        for shown, actual in self.ids.items():
            text = text.replace(shown, actual)
        for shown, actual in self.databases.items():
            text = text.replace(shown, actual)
        return text.replace("/tmp/shop", str(self.folder))

    def host(self, name: str) -> dict[str, str]:
        """The environment of the shell of host ``name`` (``app-1$``): a folder of its own
        under ``walk/`` holding ``banner.png``, and its ``MEDIA_REGISTRY_HOST_ID``."""
        if name not in self.hosts:
            folder = self.folder.parent / "walk" / name
            folder.mkdir(parents=True)
            (folder / "banner.png").write_bytes((self.folder / "banner.png").read_bytes())
            self.hosts[name] = {**self.env, "PWD": str(folder), "MEDIA_REGISTRY_HOST_ID": name}
        return self.hosts[name]

    def shell(self, command: str, check: bool = False, host: str = "") -> str:
        """One command in bash, in the page's folder and environment, or ``host``'s shell
        (exports and ``cd`` carried on); ``check``: it must succeed, each line of it."""
        env = self.host(host) if host else self.env
        command = self.actual(command)
        state = self.folder.parent / "env"
        # set -a: a variable the session sets (ID=...) lives on into its next command
        script = ("set -e\n" if check else "") + "set -a\n{ " + command + f"\n}} 2>&1\nenv -0 > {state}"
        ran = subprocess.run(["bash", "-c", script], cwd=env["PWD"], env=env, capture_output=True, text=True,
                             timeout=120)
        assert not check or ran.returncode == 0, f"{command}\n{ran.stdout}"
        if state.exists():
            env = dict(item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
            self.hosts.update({host: env} if host else {})
            self.env = self.env if host else env
            state.unlink()
        return ran.stdout


def commands(session: str) -> Iterator[tuple[str, str, str]]:
    """Each command of a session: its prompt's name (``app-1`` of ``app-1$``), the command (with
    the lines of its here-document), and the output shown after it."""
    lines = session.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        prompt, _, command = lines[index].partition("$ ")
        command = command.rstrip("\n")
        index += 1
        if (heredoc := re.search(r"<<(\w+)$", command)) is not None:
            while lines[index].rstrip("\n") != heredoc[1]:
                command += "\n" + lines[index].rstrip("\n")
                index += 1
            command += "\n" + heredoc[1]
            index += 1
        output = ""
        while index < len(lines) and not PROMPT.match(lines[index]):
            output += lines[index]
            index += 1
        yield prompt, command, output


def terminal_env(folder: Path) -> dict[str, str]:
    """The page's starting environment: no settings of the caller's, the venv's commands first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    env["PWD"] = str(folder)
    env["PATH"] = f"{CLI.parent}{os.pathsep}{env['PATH']}"
    env["MEDIA_REGISTRY_RETRY_BACKOFF"] = "0.01"
    return env
