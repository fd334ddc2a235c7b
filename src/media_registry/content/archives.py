"""Where inbound files are kept (``MEDIA_REGISTRY_ARCHIVE``): a folder of verified
``<sha256>.<ext>`` files (the default: ``MEDIA_REGISTRY_BLOB_DIR``), or an S3-compatible
bucket (``s3://bucket/prefix``, the ``s3`` extra: boto3).

Objects are content-addressed (``<prefix>/<sha256>.<ext>``) and written create-only
(``If-None-Match: *``): a redelivered webhook or two hosts racing never overwrite an object,
and a store that ignores the condition still ends with the same bytes under the key. The
SHA-256 checksum goes with each write (``MEDIA_REGISTRY_S3_CHECKSUM=off`` leaves it out for
stores that refuse the newer checksum headers), and the item's media ID, phone number ID,
MIME type and received time as object metadata. Credentials come from the standard AWS
chain and never appear in an error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, IntegrityError, MediaRegistryError, redact, register_secret
from . import blobs

CREDENTIALS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class ArchiveError(MediaRegistryError):
    """The archive could not store a file (the store is down or refused it); retried."""


SPOOL_IN_MEMORY = 8 * 1024 * 1024  # a larger download goes to an unnamed temporary file


class VerifiedSpool:
    """A download on its way to the bucket: in memory, or past ``SPOOL_IN_MEMORY`` an unnamed
    temporary file (gone with the process, whatever happens), hashed as it is written;
    :meth:`finish` checks size and sha256."""

    def __init__(self, size: int, sha256: str) -> None:
        self.file: BinaryIO = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # type: ignore[assignment]
        self._size, self._sha256 = size, sha256
        self._digest, self._received = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk; more bytes than announced fail at once."""
        self._received += len(chunk)
        if self._received > self._size:
            raise IntegrityError(f"received more than the {self._size:,} bytes announced; not archived")
        self._digest.update(chunk)
        self.file.write(chunk)

    def finish(self) -> None:
        """IntegrityError unless the bytes are whole and their sha256 is the API's."""
        if self._received != self._size or self._digest.hexdigest() != self._sha256:
            raise IntegrityError(f"received {self._received:,} of {self._size:,} bytes, or bytes whose sha256 is "
                                 "not the API's; not archived, retried later")
        self.file.seek(0)

    def close(self) -> None:
        """Drop the bytes."""
        self.file.close()


class S3Archive:
    """An S3-compatible bucket under ``s3://bucket/prefix``."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, checksum: bool = True,
                 timeout: float = 60.0) -> None:
        self.bucket, _, prefix = url[len("s3://"):].partition("/")
        self.prefix = prefix.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.checksum = checksum
        for name in CREDENTIALS:
            register_secret(os.environ.get(name), "AWS credential")
        self.endpoint_url, self.timeout = endpoint_url, timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def key(self, sha256: str, mime_type: str) -> str:
        """The object key of a content."""
        name = blobs.file_name(sha256, mime_type)
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, body: BinaryIO, sha256: str, mime_type: str, metadata: dict[str, str]) -> str:
        """Store the verified bytes of ``body`` under their key, unless an object is there
        already; the object's ``s3://`` location. ArchiveError when the store fails."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(sha256, mime_type)
        extra: dict[str, Any] = {"ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode()} \
            if self.checksum else {}
        try:
            self.client().put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=mime_type,
                                     Metadata=metadata, IfNoneMatch="*", **extra)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 412:
                raise ArchiveError(redact(f"{self.url}: the store refused {key} "
                                          f"({exc.response.get('Error', {}).get('Code', 'error')}); "
                                          "retried later: check the bucket and its permissions")) from None
        except BotoCoreError as exc:
            raise ArchiveError(redact(f"{self.url}: {type(exc).__name__} storing {key}; retried later: "
                                      "check MEDIA_REGISTRY_S3_ENDPOINT_URL and the credentials")) from None
        return f"s3://{self.bucket}/{key}"

    def reach(self) -> None:
        """Ask the store for the bucket; ArchiveError naming the fix when it cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            why = {403: "access denied: check the credentials' permissions",
                   404: "no such bucket: create it or fix MEDIA_REGISTRY_ARCHIVE"}.get(status, f"HTTP {status}")
            raise ArchiveError(redact(f"{self.url}: {why}")) from None
        except BotoCoreError as exc:
            raise ArchiveError(redact(f"{self.url}: {type(exc).__name__}: check MEDIA_REGISTRY_S3_ENDPOINT_URL "
                                      "and the credentials")) from None

    def client(self) -> Any:
        """The boto3 client, made once (clients are thread-safe; sessions are not)."""
        with self._lock:
            if self._client is None:
                self._client = _client(self.endpoint_url, self.timeout, self.checksum)
            return self._client


def _client(endpoint_url: str | None, timeout: float, checksum: bool) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ModuleNotFoundError:
        raise ConfigError("MEDIA_REGISTRY_ARCHIVE is an s3:// URL, which needs the s3 extra: "
                          "pip install 'media-registry[s3]'") from None
    # Without the checksum, no checksum header at all: newer boto3 would add a CRC32 one.
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2},
                    request_checksum_calculation="when_supported" if checksum else "when_required",
                    response_checksum_validation="when_supported" if checksum else "when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def open_archive(archive: str | None, blob_dir: Path, *, endpoint_url: str | None, checksum: str,
                 timeout: float) -> Path | S3Archive:
    """The archive a setting names: a folder, or an S3 bucket."""
    if archive and archive.startswith("s3://"):
        return S3Archive(archive, endpoint_url=endpoint_url, checksum=checksum == "sha256", timeout=timeout)
    return Path(archive) if archive else blob_dir
