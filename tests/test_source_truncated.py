"""A source file cut short while its upload is being sent: SourceChanged in one line."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PDF, wait_for

# Far more than loopback's socket buffers hold while the API does not read: the CLI is still
# reading the file when it is cut.
BIG = 12_000_000


@pytest.mark.sqlite_only
def test_a_file_truncated_while_its_upload_is_sent_is_source_changed(
    cli_env: dict[str, str], tmp_path: Path, api: FakeGraphAPI
) -> None:
    path = tmp_path / "brochure.pdf"
    path.write_bytes(sample_media(PDF, salt="brochure", size=BIG))
    held = threading.Event()
    api.fail(until=held, method="POST")  # the API takes the headers, then reads nothing
    upload = subprocess.Popen([str(CLI), "upload", str(path)], env=cli_env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: api.count("POST") == 1, "the upload to start")
        os.truncate(path, 0)
    finally:
        held.set()
    out, err = upload.communicate(timeout=60)
    assert upload.returncode == 1, out + err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "SourceChanged" in err or "changed while it was" in err, err
    assert str(path) in err
    assert registry_db.media_states(cli_env["MEDIA_REGISTRY_DB"]) == []
