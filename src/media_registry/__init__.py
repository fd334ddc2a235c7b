"""media-registry: media IDs for the WhatsApp Cloud API that are valid now, uploaded once."""

from .config import Settings
from .errors import (
    APIUnreachable,
    AuthError,
    ConfigError,
    DownloadError,
    DownloadURLExpired,
    GraphAPIError,
    InputError,
    IntegrityError,
    MediaNotFound,
    MediaRegistryError,
    MediaTooLarge,
    MislabelledMedia,
    NotInRegistry,
    RateLimited,
    RegistryCorrupt,
    RegistryError,
    RegistryLocked,
    SchemaTooNew,
    SourceChanged,
    SourceNotFound,
    UnsafeDownloadURL,
    UnsupportedMedia,
)
from .models import DownloadedMedia, InboundMedia, LifecycleAction, MediaEvent, MediaRecord, Report
from .refusal import media_id_refused
from .registry import AsyncMediaRegistry, MediaRegistry, Outcome

__version__ = "0.1.0"

__all__ = [
    "APIUnreachable",
    "AsyncMediaRegistry",
    "AuthError",
    "ConfigError",
    "DownloadError",
    "DownloadURLExpired",
    "DownloadedMedia",
    "GraphAPIError",
    "InputError",
    "InboundMedia",
    "IntegrityError",
    "LifecycleAction",
    "MediaEvent",
    "MediaNotFound",
    "MediaRecord",
    "MediaRegistry",
    "MediaRegistryError",
    "MediaTooLarge",
    "MislabelledMedia",
    "NotInRegistry",
    "Outcome",
    "RateLimited",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryLocked",
    "Report",
    "SchemaTooNew",
    "Settings",
    "SourceChanged",
    "SourceNotFound",
    "UnsafeDownloadURL",
    "UnsupportedMedia",
    "__version__",
    "media_id_refused",
]
