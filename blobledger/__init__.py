"""blobledger: event-sourced metadata on Kafka + PostgreSQL, blobs on S3.

The public API::

    from blobledger import connect, ConflictError

    with connect(actor="alice") as client:        # settings from BLOBLEDGER_* variables
        client.create("reports/q3.pdf", {"owner": "finance"})

``connect`` wires the configured adapters (:func:`blobledger.infra.bootstrap.client`);
:class:`Client` is the type it returns; every error the project raises on purpose is
importable from here (they live in :mod:`blobledger.schemas.errors`). Names are resolved on
first use, so ``import blobledger`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blobledger.infra.bootstrap import client as connect
    from blobledger.infra.settings import Settings
    from blobledger.producers.client import AttachResult, Client, Result
    from blobledger.schemas.errors import (
        AuthorizationError,
        BlobIntegrityError,
        BlobledgerError,
        CircuitOpenError,
        CodecError,
        ConfigurationError,
        ConflictError,
        DomainError,
        InfrastructureError,
        NotFoundError,
        NotRunningError,
        ObjectDeletedError,
        PermanentError,
        RejectedError,
        StackError,
        TimeoutExpired,
        TransientError,
        TruncatedMessageError,
        UnauthenticatedError,
        UnknownSchemaError,
        ValidationError,
    )

_ERRORS = (
    "AuthorizationError",
    "BlobIntegrityError",
    "BlobledgerError",
    "CircuitOpenError",
    "CodecError",
    "ConfigurationError",
    "ConflictError",
    "DomainError",
    "InfrastructureError",
    "NotFoundError",
    "NotRunningError",
    "ObjectDeletedError",
    "PermanentError",
    "RejectedError",
    "StackError",
    "TimeoutExpired",
    "TransientError",
    "TruncatedMessageError",
    "UnauthenticatedError",
    "UnknownSchemaError",
    "ValidationError",
)
_WHERE = {
    "connect": ("blobledger.infra.bootstrap", "client"),
    "Client": ("blobledger.producers.client", "Client"),
    "Result": ("blobledger.producers.client", "Result"),
    "AttachResult": ("blobledger.producers.client", "AttachResult"),
    "Settings": ("blobledger.infra.settings", "Settings"),
    **{name: ("blobledger.schemas.errors", name) for name in _ERRORS},
}

__all__ = [
    "AttachResult",
    "AuthorizationError",
    "BlobIntegrityError",
    "BlobledgerError",
    "CircuitOpenError",
    "Client",
    "CodecError",
    "ConfigurationError",
    "ConflictError",
    "DomainError",
    "InfrastructureError",
    "NotFoundError",
    "NotRunningError",
    "ObjectDeletedError",
    "PermanentError",
    "RejectedError",
    "Result",
    "Settings",
    "StackError",
    "TimeoutExpired",
    "TransientError",
    "TruncatedMessageError",
    "UnauthenticatedError",
    "UnknownSchemaError",
    "ValidationError",
    "connect",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'blobledger' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
