"""The embedded stack (PostgreSQL, SeaweedFS S3, Tansu) that runs with pip installs only.

``Stack(settings).up()`` is the Python entry point; ``blobledger stack up|down|status`` the CLI.
"""

from blobledger.infra.stack.base import ServiceStatus
from blobledger.infra.stack.launcher import Stack

__all__ = ["ServiceStatus", "Stack"]
