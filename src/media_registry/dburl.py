"""The ``postgresql://`` registry URL: kept whole for the driver, shown everywhere without its
password (str, repr, errors, logs, ``stats``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .errors import register_secret

if TYPE_CHECKING:  # the store imports this module on the command line's lean cache hit
    from pydantic import GetCoreSchemaHandler

SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(value: object) -> bool:
    """Whether a ``MEDIA_REGISTRY_DB`` value names a PostgreSQL server rather than a file."""
    return isinstance(value, PostgresURL) or (isinstance(value, str) and value.startswith(SCHEMES))


class PostgresURL:
    """``postgresql://user:password@host:port/dbname``; ``str()`` leaves the password out."""

    def __init__(self, url: str) -> None:
        if not url.startswith(SCHEMES):
            raise ValueError("must start with postgresql://")
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018  (parsing the port is the check)
        except ValueError:
            raise ValueError(f"bad port in {_redact(url)}") from None
        if not parts.path.strip("/"):
            raise ValueError(f"{_redact(url)} names no database; end it with /DBNAME") from None
        self._url = url
        # Whatever echoes it (a driver's message, a traceback) shows <password> instead.
        for form in {parts.password, unquote(parts.password or "")}:
            register_secret(form, "password")

    def secret(self) -> str:
        """The URL with its password, for the database driver only."""
        return self._url

    def __str__(self) -> str:
        return _redact(self._url)

    def __repr__(self) -> str:
        return f"PostgresURL({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresURL) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> Any:
        from pydantic_core import core_schema

        from_text = core_schema.no_info_after_validator_function(cls, core_schema.str_schema())
        return core_schema.union_schema(
            [core_schema.is_instance_schema(cls), from_text],
            serialization=core_schema.to_string_ser_schema(),
        )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    if netloc[1]:
        user = netloc[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}@{netloc[2]}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    return parts._replace(query=urlencode(query)).geturl()
