"""Errors raised by the core, mapped to HTTP statuses only at the service edge (app/errors.py).

FusionrecError                 base; every message names what was wrong
├── DataError                  a dataset file is missing, empty or malformed (400 / CLI exit 2)
├── ConfigError                an invalid model or runtime configuration (400 / exit 2)
├── InvalidInputError          a well-formed request whose content does not fit the catalog (422)
├── NotFoundError              an item or user id that the request needs does not exist (404)
├── ConflictError              the request conflicts with the current state (409)
│   └── ReloadRefusedError     a newer bundle failed its checks; the old one keeps serving
├── IndexBuildError            an index failed its recall floor or cannot be built (409)
├── BundleError                a bundle cannot be loaded or published (503 / exit 2)
│   ├── BundleNotFoundError    no such version, or no CURRENT pointer
│   └── BundleIntegrityError   hash, version or dimension mismatch; refused
├── UnavailableError           the service cannot answer now; retry after ``retry_after_s`` (503)
│   ├── NotReadyError          no bundle is loaded (yet)
│   └── DependencyError        a store the answer needs (Redis, the event log) is down
└── FetchError                 an external download (package registry) failed (exit 2)
"""

from __future__ import annotations


class FusionrecError(Exception):
    """Base class of every error fusionrec raises on purpose."""


class DataError(FusionrecError):
    """A dataset file is missing, empty or malformed. The message names file, row and field."""


class ConfigError(FusionrecError):
    """An invalid configuration value; the message names the valid values."""


class InvalidInputError(FusionrecError):
    """Input that is well formed but invalid for this catalog (an unknown field, no text)."""


class NotFoundError(FusionrecError):
    """An id the caller named does not exist."""


class ConflictError(FusionrecError):
    """The request conflicts with the current state of the store or the service."""


class ReloadRefusedError(ConflictError):
    """A newer bundle exists but failed its checks; the old one keeps serving."""


class IndexBuildError(FusionrecError):
    """An index cannot be built or does not reach its recall floor."""


class BundleError(FusionrecError):
    """A bundle cannot be loaded or published."""


class BundleNotFoundError(BundleError):
    """The requested bundle version, or the CURRENT pointer, does not exist."""


class BundleIntegrityError(BundleError):
    """A bundle file's hash, a library version or a dimension does not match the manifest."""


class UnavailableError(FusionrecError):
    """The answer cannot be given now; a retry after ``retry_after_s`` may succeed."""

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(UnavailableError):
    """No bundle is loaded (yet): the store is empty or the bundle was refused at start."""


class DependencyError(UnavailableError):
    """A store the answer cannot do without (Redis for an erasure, the event log) is down;
    ``dependency`` names it (``redis``, ``event_log``)."""

    def __init__(self, message: str, *, dependency: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.dependency = dependency


class PreconditionFailedError(FusionrecError):
    """A conditional write (``If-Match``) named another version than the current one."""


class FetchError(FusionrecError):
    """A download from a package registry failed."""
