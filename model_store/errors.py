"""Errors raised by the core, mapped to HTTP statuses only at the service edge.

FusionrecError                 base; every message names what was wrong
├── DataError                  a dataset file is missing, empty or malformed (400 / CLI exit 2)
├── ConfigError                an invalid model or runtime configuration (400 / exit 2)
├── BundleError                a bundle cannot be loaded or published (503 / exit 2)
│   ├── BundleNotFoundError    no such version, or no CURRENT pointer (404 / 503)
│   └── BundleIntegrityError   hash, version or dimension mismatch; refused (503)
├── IndexBuildError            an index failed its recall floor or cannot be built (409)
├── NotFoundError              an item or user id that the request needs does not exist (404)
└── FetchError                 an external download (package registry) failed (exit 2)
"""

from __future__ import annotations


class FusionrecError(Exception):
    """Base class of every error fusionrec raises on purpose."""


class DataError(FusionrecError):
    """A dataset file is missing, empty or malformed. The message names file, row and field."""


class ConfigError(FusionrecError):
    """An invalid configuration value; the message names the valid values."""


class BundleError(FusionrecError):
    """A bundle cannot be loaded or published."""


class BundleNotFoundError(BundleError):
    """The requested bundle version, or the CURRENT pointer, does not exist."""


class BundleIntegrityError(BundleError):
    """A bundle file's hash, a library version or a dimension does not match the manifest."""


class IndexBuildError(FusionrecError):
    """An index cannot be built or does not reach its recall floor."""


class NotFoundError(FusionrecError):
    """An id the caller named does not exist."""


class FetchError(FusionrecError):
    """A download from a package registry failed."""
