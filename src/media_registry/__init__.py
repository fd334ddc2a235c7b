"""media-registry: media IDs for the WhatsApp Cloud API that are valid now, uploaded once.

The public names are imported on first use (PEP 562), so that ``import media_registry`` and
the command line's cache hit stay cheap: httpx and pydantic load only when a name that needs
them is touched.
"""

from __future__ import annotations

from ._version import __version__

TYPE_CHECKING = False  # without importing typing: `media-registry --version` stays lean
if TYPE_CHECKING:
    from typing import Any

    from .config import Settings
    from .errors import (
        AccessDenied,
        APIUnreachable,
        AuthError,
        ConfigError,
        ContentDeleted,
        DownloadError,
        DownloadURLExpired,
        GraphAPIError,
        InputError,
        IntegrityError,
        MediaNotFound,
        MediaRegistryError,
        MediaTooLarge,
        MislabelledMedia,
        NotAuthenticated,
        NotInRegistry,
        RateLimited,
        RegistryCorrupt,
        RegistryError,
        RegistryLocked,
        RegistryUnreachable,
        SchemaTooNew,
        SourceChanged,
        SourceNotFound,
        SourceUnavailable,
        SourceUnreadable,
        UnsafeDownloadURL,
        UnsafeSourceURL,
        UnsupportedMedia,
    )
    from .graph.refusal import media_id_refused
    from .models import DownloadedMedia, InboundMedia, LifecycleAction, MediaEvent, MediaRecord, Report
    from .registry import AsyncMediaRegistry, MediaRegistry, Outcome
    from .webhooks import WebhookReport


__all__ = [
    "APIUnreachable",
    "AccessDenied",
    "AsyncMediaRegistry",
    "AuthError",
    "ConfigError",
    "ContentDeleted",
    "DownloadError",
    "DownloadURLExpired",
    "DownloadedMedia",
    "GraphAPIError",
    "InboundMedia",
    "InputError",
    "IntegrityError",
    "LifecycleAction",
    "MediaEvent",
    "MediaNotFound",
    "MediaRecord",
    "MediaRegistry",
    "MediaRegistryError",
    "MediaTooLarge",
    "MislabelledMedia",
    "NotAuthenticated",
    "NotInRegistry",
    "Outcome",
    "RateLimited",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryLocked",
    "RegistryUnreachable",
    "Report",
    "SchemaTooNew",
    "Settings",
    "SourceChanged",
    "SourceNotFound",
    "SourceUnavailable",
    "SourceUnreadable",
    "UnsafeDownloadURL",
    "UnsafeSourceURL",
    "UnsupportedMedia",
    "WebhookReport",
    "__version__",
    "media_id_refused",
]

# The modules a public name may live in, lightest first: a name is looked up in them in turn,
# so __all__ stays the one list of public names.
_HOMES = ("errors", "graph.refusal", "models", "config", "registry", "webhooks")


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    for home in _HOMES:
        module = importlib.import_module(f".{home}", __name__)
        if hasattr(module, name):
            value = getattr(module, name)
            globals()[name] = value  # later lookups skip this function
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
