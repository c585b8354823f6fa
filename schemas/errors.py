"""The project's error hierarchy.

Adapters translate driver errors into these (``raise X(...) from e``) so callers never
see a psycopg/boto/librdkafka exception, and retries (tenacity) apply to
:class:`TransientError` only. Pure module: no I/O imports, safe for domain code.
"""

from __future__ import annotations

from datetime import UTC, datetime


class BlobledgerError(Exception):
    """Base of every error the project raises on purpose."""

    #: a stable, machine-readable code (CLI --json output, compensation reasons)
    code: str = "error"


# --- configuration / environment ---------------------------------------------------------
class ConfigurationError(BlobledgerError):
    code = "configuration"


class StackError(BlobledgerError):
    """A service of the embedded stack failed to start, stop or answer."""

    code = "stack"

    def __init__(self, message: str, *, service: str | None = None, log_file: str | None = None):
        detail = message
        if service:
            detail = f"{service}: {detail}"
        if log_file:
            detail = f"{detail} (see its log: {log_file})"
        super().__init__(detail)
        self.service = service
        self.log_file = log_file


# --- domain / validation (permanent: retrying does not help) ----------------------------
class DomainError(BlobledgerError):
    code = "domain"


class ValidationError(DomainError):
    code = "invalid"


class AuthorizationError(DomainError):
    code = "forbidden"


class UnauthenticatedError(DomainError):
    """What was published carries no valid authenticator for its actor (schemas/auth.py)."""

    code = "unauthenticated"


class NotFoundError(DomainError):
    code = "not_found"


class ObjectDeletedError(NotFoundError):
    """The object existed and was deleted: reads and writes of it are refused, and the
    message says so (with when and by whom, to those who may read it), not "not found"."""

    code = "deleted"

    @classmethod
    def of(cls, name: str, *, version: int, actor: str, at: datetime) -> ObjectDeletedError:
        when = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return cls(f"object {name} was deleted (version {version}, by {actor} at {when})")


class ConflictError(DomainError):
    """The expected version did not match; ``current_version`` says what it is now."""

    code = "conflict"

    def __init__(self, message: str, *, current_version: int | None = None):
        super().__init__(message)
        self.current_version = current_version


class RejectedError(DomainError):
    """The fold rejected an event for a reason other than conflict or permission."""

    code = "rejected"

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


# --- encoding ------------------------------------------------------------------------------
class CodecError(BlobledgerError):
    """Bytes that cannot be decoded into a known event (they go to the DLQ)."""

    code = "codec"


class UnknownSchemaError(CodecError):
    code = "unknown_schema"


class TruncatedMessageError(CodecError):
    code = "truncated"


# --- infrastructure --------------------------------------------------------------------------
class InfrastructureError(BlobledgerError):
    code = "infrastructure"


class TransientError(InfrastructureError):
    """Worth retrying: timeouts, connection resets, 5xx, broker unavailable."""

    code = "transient"


class PermanentError(InfrastructureError):
    """Retrying will not help: access denied, missing bucket, bad request."""

    code = "permanent"


class TimeoutExpired(TransientError):
    code = "timeout"


class NotRunningError(TimeoutExpired):
    """A wait given up early: no projector or blob worker is consuming what it waits on,
    so nothing would end it. A timed-out wait, only sooner: callers handle both alike."""

    code = "not_running"


class CircuitOpenError(TransientError):
    """A dependency failed too often; calls are refused until the breaker half-opens."""

    code = "circuit_open"


class BlobIntegrityError(PermanentError):
    """The bytes read do not hash to the blob's recorded SHA-256."""

    code = "checksum_mismatch"
