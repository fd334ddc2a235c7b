"""Make tests/data/registry-v1.db with media-registry's schema version 1 (the code as of
commit 1935d57), for the upgrade tests. Run it with that version installed:

    python tests/data/make_registry_v1.py tests/data/registry-v1.db

It builds: three contents sent on two phone numbers, one of them refreshed (its old ID
superseded), one deleted while the API was down (its ID owes a remote DELETE), events for
all of it, and one inbound download. Paths point into a folder that no longer exists.
"""

import sqlite3
import sys
import tempfile
from pathlib import Path

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

OTHER_NUMBER = "106540352242923"


def main(target: Path) -> None:
    with FakeGraphAPI() as api, tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        db = root / "registry.db"
        files = []
        for index, mime_type in enumerate(("image/png", "application/pdf", "image/jpeg")):
            path = root / f"file-{index}.{mime_type.split('/')[1]}"
            path.write_bytes(sample_media(mime_type, salt=f"v1-{index}"))
            files.append(path)
        with MediaRegistry(db=db, token=api.token, phone_number_id=api.phone_number_id,
                           api_base=api.base_url, max_retries=0, clock=api.now) as reg:
            for path in files:
                reg.get_or_upload(path)
            reg.get_or_upload(files[0], phone_number_id=OTHER_NUMBER)
            api.advance(days=28)  # the first IDs near expiry: refresh supersedes them
            reg.refresh_expiring()
            api.fail(status=500, method="DELETE", times=10)
            reg.delete(files[2])  # the API is down: the ID stays 'deleting'
            inbound = api.add_media(sample_media("image/png", salt="inbound"), "image/png")
            reg.download(inbound, root / "inbound")
        with sqlite3.connect(db) as con:
            con.execute("VACUUM INTO ?", (str(target),))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
