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
from .models import MediaEvent, MediaRecord
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
    "MediaEvent",
    "MediaNotFound",
    "MediaRecord",
    "MediaRegistry",
    "MediaRegistryError",
    "MediaTooLarge",
    "MislabelledMedia",
    "RateLimited",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryLocked",
    "SchemaTooNew",
    "Settings",
    "SourceChanged",
    "SourceNotFound",
    "UnsafeDownloadURL",
    "UnsupportedMedia",
    "__version__",
]
