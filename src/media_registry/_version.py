"""The one place the version is written: the package metadata, ``__version__`` and the
User-Agent of Graph API requests all read it (a plain literal, so reading it imports nothing)."""

__version__ = "0.3.0"
