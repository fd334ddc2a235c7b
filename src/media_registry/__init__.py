"""media-registry: media IDs for the WhatsApp Cloud API that are valid now, uploaded once."""

from .config import Settings
from .errors import (
    APIUnreachable,
    AuthError,
    ConfigError,
    DownloadError,
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
from .models import LifecycleAction, MediaEvent, MediaRecord, Report
from .registry import MediaRegistry

__version__ = "0.1.0"

__all__ = [
    "APIUnreachable",
    "AuthError",
    "ConfigError",
    "DownloadError",
    "GraphAPIError",
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
    "NotInRegistry",
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
]
