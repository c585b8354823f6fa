"""The in-memory S3 of the unit tests: the library's twin under its old name."""

from blobledger.infra.memory.blobstore import InMemoryBlobStore as FakeS3
from blobledger.infra.memory.blobstore import client_error

__all__ = ["FakeS3", "client_error"]
