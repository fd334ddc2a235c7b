"""Every setting's default, written once, named after its setting.

The settings (config.py) take them as their defaults; the command line's lean cache hit
(_quick.py), and the clients and stores made without settings, read them here. The standard
library alone: the cache hit imports this module.
"""

from __future__ import annotations

import os
from datetime import timedelta

from ._version import __version__

DB = "media-registry.db"
BLOB_DIR = "media-blobs"
# Meta retires a Graph API version about two years after its release.
API_BASE = "https://graph.facebook.com/v26.0"
# Graph API requests carry the project's own (Meta's spec constrains it); downloads from the
# media hosts a browser-like one, as some clients report them refusing any other.
USER_AGENT = f"media-registry/{__version__}"
DOWNLOAD_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)
MEDIA_HOSTS = (".fbsbx.com", ".whatsapp.net", ".facebook.com", ".fbcdn.net")
# S3 and GCS presigned URLs: the signature and the parameters that change with it.
URL_IGNORE_QUERY = (
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Security-Token",
    "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Goog-*",
)
# socket.gethostname() without loading socket on a cache hit.
HOST_ID = os.uname().nodename

# Seconds, counts and rates.
TIMEOUT = 60.0
DOWNLOAD_DEADLINE = 300.0
MAX_RETRIES = 4
RETRY_BACKOFF = 0.5
REFRESH_CONCURRENCY = 4
BUSY_TIMEOUT = 10.0
LEASE_SECONDS = 60.0
UPLOADS_PER_SECOND = 20.0
PG_POOL_SIZE = 10
LOCAL_CACHE_SIZE = 100_000  # the hits a process keeps in memory (SQLite and PostgreSQL)

# The HTTP service's limits (`serve` options), in seconds.
BODY_TIMEOUT = 60
GRACEFUL_TIMEOUT = 30

# Durations.
TTL = timedelta(days=30)
MIN_VALIDITY = timedelta(days=1)
REFRESH_BEFORE = timedelta(days=3)
REFRESH_INTERVAL = timedelta(hours=1)
PURGE_INTERVAL = timedelta(hours=1)
URL_REVALIDATE = timedelta(minutes=5)
REPAIR_WINDOW = timedelta(minutes=10)
HOST_RETENTION = timedelta(days=14)
# Inbound items and sent messages: Meta keeps a webhook's media 7 days, and retries a webhook
# that long.
SENT_RETENTION = timedelta(days=7)
# Meta's "Media upload error", sent in a failed status: the media ID was no good.
REPAIR_CODES = (131053,)
S3_CHECKSUM = "sha256"
# Seconds between two looks at the archive queue when nothing wakes the worker.
ARCHIVE_POLL = 5.0
# Meta documents no lifetime for a template header handle: one is reused for this long.
HANDLE_TTL = timedelta(days=1)
