"""In-memory twins of the ports (:mod:`blobledger.schemas.ports`) for unit tests.

Each behaves like the real adapter it stands in for (librdkafka on Tansu, boto3 on
SeaweedFS) and is held to the same contract test suite (``tests/contract``), so a test
written against a twin says something about production. Their module docstrings list
what each deliberately leaves out.
"""

from blobledger.infra.memory.blobstore import InMemoryBlobStore
from blobledger.infra.memory.keys import MemoryKeys
from blobledger.infra.memory.log import (
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryMessage,
    InMemoryProducer,
)

__all__ = [
    "InMemoryBlobStore",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryMessage",
    "InMemoryProducer",
    "MemoryKeys",
]
