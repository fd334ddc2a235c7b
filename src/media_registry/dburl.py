"""The ``postgresql://`` registry URL: kept whole for the driver, shown everywhere without its
password (str, repr, errors, logs, ``stats``)."""

from __future__ import annotations

import re

from .errors import register_secret

TYPE_CHECKING = False  # without `typing`: the store imports this module on the command line's lean cache hit
if TYPE_CHECKING:
    from typing import Any

    from pydantic import GetCoreSchemaHandler

SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(value: object) -> bool:
    """Whether a ``MEDIA_REGISTRY_DB`` value names a PostgreSQL server rather than a file."""
    return isinstance(value, PostgresURL) or (isinstance(value, str) and value.startswith(SCHEMES))


def refuse_other_url(value: str) -> None:
    """ValueError for a value that names a database, but not as a ``postgresql://`` URL: by
    another URL (``PostgreSQL://``, ``postgresql+psycopg://``, ``mysql://``) or as a libpq
    keyword string (``host=db password=...``). It must not be taken for a file path, nor its
    password shown."""
    if is_postgres_url(value):
        return
    if "=" in value and re.search(_KEYWORD, value):
        for password in re.findall(_KEYWORD_PASSWORD, value):
            _register(password.strip("'"))
        raise ValueError("a libpq keyword string (host=... dbname=...) is neither a file path nor a "
                         "postgresql:// URL; give postgresql://user:password@host:port/dbname "
                         "(or ./NAME for a file whose name starts so)")
    if "://" in value:
        _register_passwords(value)
        raise ValueError(f"{_redact(value)!r} is neither a file path nor a postgresql:// URL; "
                         "give postgresql://user:password@host:port/dbname (lower case, no driver "
                         "name), or a file path for SQLite")


class PostgresURL:
    """``postgresql://user:password@host:port/dbname``; ``str()`` leaves the password out."""

    def __init__(self, url: str) -> None:
        if not url.startswith(SCHEMES):
            raise ValueError("must start with postgresql://")
        # Whatever echoes it (a driver's message, a traceback) shows <password> instead; a
        # malformed URL's password too, so registered before the checks.
        _register_passwords(url)
        from urllib.parse import urlsplit  # here, not at the top: a registry file's commands start without it

        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018  (parsing the port is the check)
        except ValueError:
            raise ValueError(f"bad port in {_redact(url)} (a password holding @ : / ? # or % "
                             "must be percent-encoded, e.g. @ as %40)") from None
        if not parts.path.strip("/"):
            raise ValueError(f"{_redact(url)} names no database; end it with /DBNAME") from None
        self._url = url

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


# Patterns are compiled on first use (re keeps them): a registry file's commands start without
# them. A query parameter, ?key=value or &key=value; libpq percent-decodes its key, so
# ?%70assword=... gives the password too.
_QUERY_PARAMETER = r"(?<=[?&])([^&=]*)=([^&]*)&?"
# A libpq keyword string names its parts as key=value words: "host=db dbname=fleet".
_KEYWORD = (r"(?i)(?:^|\s)(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode|"
            r"connect_timeout|options|application_name|target_session_attrs)\s*=")
_KEYWORD_PASSWORD = r"(?i)(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)"


def _redact(url: str) -> str:
    # Not urlsplit: an unencoded "#", "?" or "/" in a password would end its netloc early
    # and show the rest. Everything before the last "@" is the user and password, whatever
    # they hold.
    scheme, _, rest = _without_query_passwords(url).rstrip("?&").partition("://")
    userinfo, at, rest = rest.rpartition("@")
    return f"{scheme}://{userinfo.partition(':')[0]}{at}{rest}"


def _is_password_key(key: str) -> bool:
    from urllib.parse import unquote

    return unquote(key).strip().lower() == "password"


def _without_query_passwords(url: str) -> str:
    return re.sub(_QUERY_PARAMETER, lambda match: "" if _is_password_key(match[1]) else match[0], url)


def _passwords(url: str) -> list[str]:
    userinfo = _without_query_passwords(url).partition("://")[2].rpartition("@")[0]
    query = [value for key, value in re.findall(_QUERY_PARAMETER, url) if _is_password_key(key)]
    return [userinfo.partition(":")[2], *query]


def _register_passwords(url: str) -> None:
    from urllib.parse import unquote

    for password in _passwords(url):
        for form in {password, unquote(password)}:
            _register(form)


def _register(password: str) -> None:
    # Letters alone or digits alone hold nothing that could make the URL's parser echo them;
    # redacting such a password would mangle, and so reveal, ordinary words and numbers of
    # every message ("media-<password>" for "registry").
    if not (password.isalpha() or password.isdigit()):
        register_secret(password, "password")
