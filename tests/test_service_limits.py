"""`serve` and `daemon --metrics-port` against clients that misbehave: a blank or unusable
client token, bodies that trickle or stop half-way, idle connections by the hundred, a scrape
that never finishes its request. Real processes, raw sockets on loopback."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from conftest import CLI, wait_for
from service_helpers import LISTENING, Server, start_metrics_daemon, start_server

REQUEST_HEAD = ("POST /v1/media HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {type}\r\n"
                "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n")


@pytest.fixture
def backend() -> str:
    """The HTTP layer is the same on every backend: SQLite alone keeps these tests fast."""
    return "sqlite"


def serve_refusal(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    """`serve` expected to refuse to start; a bounded wait fails the test if it serves instead."""
    return subprocess.run([str(CLI), "serve", "--port", "0", "--no-schedule", *flags], env=env,
                          capture_output=True, text=True, timeout=30)


def reading_body(server: Server, content_type: str = "application/octet-stream") -> socket.socket:
    """A connection whose POST the service has started reading: it sent the head and 10 of the
    1000 bytes it announced, after the service asked for them (``100 Continue``)."""
    host, port = server.url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=30)
    client.sendall(REQUEST_HEAD.format(type=content_type).encode())
    assert client.recv(100).startswith(b"HTTP/1.1 100 ")
    client.sendall(b"0123456789")
    return client


def answer_status(client: socket.socket) -> bytes:
    """The status line the service answered with before it closed the connection (b"" for
    none); a connection still open after the socket's timeout fails the test."""
    answer = b""
    try:
        while chunk := client.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer.split(b"\r\n")[0]


# -- the client token ---------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "  \n"], ids=["empty", "whitespace"])
def test_a_blank_client_token_counts_as_unset(cli_env: dict[str, str], blank: str) -> None:
    refused = serve_refusal({**cli_env, "MEDIA_REGISTRY_SERVICE_TOKEN": blank}, "--host", "0.0.0.0")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1 and "MEDIA_REGISTRY_SERVICE_TOKEN" in refused.stderr


@pytest.mark.parametrize("token", ["client-0123456789abcdef\n", " client-0123456789abcdef",
                                   "client-0123456789abcdef\r\n", "client-0123\n456789abcdef"],
                         ids=["trailing-newline", "leading-space", "trailing-crlf", "inner-newline"])
def test_a_client_token_no_client_could_send_is_refused(cli_env: dict[str, str], token: str) -> None:
    # Even on loopback, where a token is optional: set, it would answer every client 401.
    refused = serve_refusal({**cli_env, "MEDIA_REGISTRY_SERVICE_TOKEN": token})
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1 and "MEDIA_REGISTRY_SERVICE_TOKEN" in refused.stderr
    assert "0123" not in refused.stderr and "Traceback" not in refused.stderr


# -- bodies that trickle or stop ----------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json"])
def test_a_body_that_trickles_past_the_body_timeout_is_a_408(
    cli_env: dict[str, str], tmp_path: Path, content_type: str
) -> None:
    running = start_server(cli_env, tmp_path / "serve.log", "--no-schedule", "--body-timeout", "1")
    try:
        with reading_body(running, content_type) as client:
            assert answer_status(client) == b"HTTP/1.1 408 Request Timeout"  # and closed
        with running.client() as other:
            assert other.get("/healthz").status_code == 200
    finally:
        assert running.stop() == 0
    assert "Traceback" not in running.text()


def test_sigterm_stops_serve_despite_a_trickling_body(cli_env: dict[str, str], tmp_path: Path) -> None:
    running = start_server(cli_env, tmp_path / "serve.log", "--no-schedule",
                           "--body-timeout", "600", "--graceful-timeout", "1")
    with reading_body(running) as client:
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0  # fails the test if serve never exits
        assert answer_status(client) == b"HTTP/1.1 503 Service Unavailable"
    assert "Traceback" not in running.text()


def test_a_client_hanging_up_mid_body_is_one_info_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    running = start_server(cli_env, tmp_path / "serve.log", "--no-schedule")
    try:
        before = running.text().count("\n")
        reading_body(running).close()
        wait_for(lambda: running.text().count("\n") > before, "the service to log the hang-up")
        with running.client() as other:  # one more request: whatever the hang-up logs is out
            assert other.get("/healthz").status_code == 200
        wait_for(lambda: '"GET /healthz' in running.text(), "the request's access line")
        lines = running.text().splitlines()[before:]
        logged = lines[:next(at for at, line in enumerate(lines) if '"GET /healthz' in line)]
    finally:
        assert running.stop() == 0
    assert len(logged) == 1 and " INFO " in logged[0] and "hung up" in logged[0], logged


# -- connections by the hundred -----------------------------------------------------------


def few_file_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.fixture
def starved_server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """`serve` with 256 file descriptors (RLIMIT_NOFILE), at its default --limit-concurrency."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(CLI), "serve", "--port", "0", "--no-schedule"], env=cli_env,
                                   stdout=out, stderr=subprocess.STDOUT, preexec_fn=few_file_descriptors)
    running = Server(process, log)
    wait_for(lambda: LISTENING.search(running.text()) is not None or process.poll() is not None,
             "the service to listen")
    assert process.poll() is None, running.text()
    running.url = f"http://127.0.0.1:{LISTENING.search(running.text()).group(2)}"  # type: ignore[union-attr]
    yield running
    assert running.stop() == 0


def test_idle_connections_cannot_starve_serve_of_file_descriptors(starved_server: Server) -> None:
    host, port = starved_server.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(300)]
    try:
        with starved_server.client() as client:
            answer = client.get("/healthz")  # waits at most the client's timeout
        assert answer.status_code in (200, 503)  # answered, or refused at the connection limit
    finally:
        for connection in idle:
            connection.close()
    with starved_server.client() as client:
        wait_for(lambda: client.get("/healthz").status_code == 200, "serve to answer again")
    log = starved_server.text()
    assert log.count("Too many open files") <= 1 and "Traceback" not in log
    assert log.count("\n") < 20, log[-2000:]


def sixty_file_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (60, 60))


def serve_with_sixty_file_descriptors(env: dict[str, str], log: Path, *flags: str) -> Server:
    """`serve` with 60 file descriptors (RLIMIT_NOFILE) and a --limit-concurrency of 200."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(CLI), "serve", "--port", "0", "--no-schedule", "--limit-concurrency", "200", *flags],
            env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=sixty_file_descriptors)
    running = Server(process, log)
    wait_for(lambda: LISTENING.search(running.text()) is not None or process.poll() is not None,
             "the service to listen")
    running.url = f"http://127.0.0.1:{LISTENING.search(running.text()).group(2)}"  # type: ignore[union-attr]
    return running


def flood(server: Server, count: int) -> list[bytes]:
    """What ``count`` uploads sent at once over connections of their own were answered."""
    host, port = server.url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(count)]
    try:
        for number, connection in enumerate(held):
            body = b"%PDF-1.4 fd " + str(number).encode()
            connection.sendall(b"POST /v1/media HTTP/1.1\r\nHost: x\r\nContent-Type: application/pdf\r\n"
                               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return [whole_answer(connection) for connection in held]
    finally:
        for connection in held:
            connection.close()


def test_running_out_of_file_descriptors_with_a_limit_set_too_high_is_no_traceback(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    running = serve_with_sixty_file_descriptors(cli_env, tmp_path / "serve.log")
    try:
        # 80 requests at once, each body to be spooled to a file of its own: 60 descriptors cannot
        # hold them all. Which of them find one depends on the order the service runs them in.
        answers = flood(running, 80)
        with running.client() as client:  # the flood's descriptors are back: uploads succeed again
            wait_for(lambda: client.post("/v1/media", content=b"%PDF-1.4 after",
                                         headers={"Content-Type": "application/pdf"}).status_code == 200,
                     "serve to take uploads again")
    finally:
        assert running.stop() == 0
    statuses = {answer.split(b"\r\n")[0] for answer in answers}
    assert b"HTTP/1.1 503 Service Unavailable" in statuses, statuses
    assert statuses <= {b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"}, statuses
    for refused in (answer for answer in answers if b" 503 " in answer.split(b"\r\n")[0]):
        assert b"retry-after: 1\r\n" in refused.lower() and b'"type":"ServiceBusy"' in refused, refused
    text = running.text()
    assert "Traceback" not in text and text.count("out of file descriptors") == 1, text[-3000:]


def test_a_stop_while_out_of_file_descriptors_is_no_traceback(cli_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    # asyncio accepts again a second after finding no descriptor left: the stop lands within
    # that second, and lasts beyond it (a request still running, up to --graceful-timeout).
    running = serve_with_sixty_file_descriptors(cli_env, tmp_path / "serve.log", "--graceful-timeout", "3")
    open_files = Path(f"/proc/{running.process.pid}/fd")
    host, port = running.url.removeprefix("http://").split(":")
    with reading_body(running) as in_flight:
        idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(80)]
        try:
            wait_for(lambda: len(list(open_files.iterdir())) >= 60, "serve to run out of descriptors")
            running.process.send_signal(signal.SIGTERM)
            assert running.process.wait(timeout=30) == 0
            assert answer_status(in_flight) == b"HTTP/1.1 503 Service Unavailable"
        finally:
            for connection in idle:
                connection.close()
    text = running.text()
    assert "Traceback" not in text and text.count("out of file descriptors") == 1, text[-3000:]


def whole_answer(client: socket.socket) -> bytes:
    """All the service answered before it closed the connection."""
    answer = b""
    with suppress(ConnectionResetError):
        while chunk := client.recv(4096):
            answer += chunk
    return answer


def test_daemon_metrics_answer_beside_a_client_that_never_finishes_its_request(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    daemon, port = start_metrics_daemon(cli_env, tmp_path / "daemon.log")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
            stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                assert client.get("/healthz").json()["status"] == "ok"
                assert client.get("/metrics").status_code == 200
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0


def test_connections_beyond_the_limit_are_answered_503_at_once(cli_env: dict[str, str],
                                                               tmp_path: Path) -> None:
    running = start_server(cli_env, tmp_path / "serve.log", "--no-schedule", "--limit-concurrency", "2")
    host, port = running.url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
    try:
        with running.client() as client:
            refused = client.get("/healthz")
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["type"] == "ServiceBusy"
            held.pop().close()
            wait_for(lambda: client.get("/healthz").status_code == 200, "a free connection")
    finally:
        for connection in held:
            connection.close()
        assert running.stop() == 0
    assert running.text().count("--limit-concurrency") == 1  # said once, not per connection
