"""A key set held in memory: what ``stack up`` writes to ``<data_dir>/keys``, for tests that
run the real Client, Projector and Worker on the in-memory twins."""

from __future__ import annotations

from dataclasses import dataclass, field

from blobledger.infra.keys import OPERATOR, SYSTEM_ROLES, new_key
from blobledger.schemas.auth import ANY_USER, Key, Keyring


def _operator() -> Key:
    return new_key(OPERATOR, "service", [ANY_USER])


@dataclass(frozen=True)
class MemoryKeys:
    """The operator's service key (acts for any user) and the two system keys."""

    operator: Key = field(default_factory=_operator)
    blob_worker: Key = field(default_factory=lambda: new_key(SYSTEM_ROLES["blob-worker"], "system"))
    reaper: Key = field(default_factory=lambda: new_key(SYSTEM_ROLES["reaper"], "system"))

    @property
    def keyring(self) -> Keyring:
        return Keyring([self.operator, self.blob_worker, self.reaper])
