"""One frozen settings object, built from ``BLOBLEDGER_*`` variables (and an optional file).

Every endpoint that is left unset falls back to the embedded stack, so the same code
runs on the laptop stack and on Apache Kafka / managed Postgres / AWS S3 by setting
variables alone. Tests build settings from a plain dict instead of the process env.
What only the test fixtures use (stack mode, Docker images) is the testing package's
``infra.testing.settings.TestSettings``, read by :func:`load_settings` from the same
variables and file.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from blobledger.schemas.errors import ConfigurationError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PREFIX = "BLOBLEDGER_"

_S = TypeVar("_S", bound="DataclassInstance")


@dataclass(frozen=True)
class Settings:
    # --- where the embedded stack keeps its state -------------------------------------
    data_dir: Path = Path(".blobledger")

    # --- external endpoints (None = use the embedded stack) ---------------------------
    kafka_bootstrap: str | None = None
    #: extra librdkafka config merged into every client (security.protocol, sasl.* ...)
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    postgres_dsn: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str = "blobledger"
    s3_secret_key: str = "blobledger-secret"
    s3_region: str = "us-east-1"
    s3_bucket: str = "blobledger-blobs"

    # --- topics ------------------------------------------------------------------------
    topic_prefix: str = "blobledger"
    partitions: int = 6
    replication_factor: int = 1
    tenant: str = "default"

    # --- embedded stack ports and broker storage ---------------------------------------
    # below Linux's ephemeral range (32768-60999), gRPC pairs (+10000) included: a port
    # in that range can be taken at random by any outgoing connection and fail a start
    pg_port: int = 15432
    s3_port: int = 18333
    kafka_port: int = 19092
    weed_master_port: int = 19333
    weed_volume_port: int = 18080
    weed_filer_port: int = 18888
    #: "s3" keeps the broker's log in SeaweedFS (durable); "memory" is fast but volatile
    broker_storage: str = "s3"
    broker_bucket: str = "blobledger-log"
    #: the broker's log gets its own SeaweedFS (the "log-store" service), so stopping the
    #: blob store never stops the metadata path; only run when broker_storage is "s3"
    log_s3_port: int = 18334
    log_weed_master_port: int = 19334
    log_weed_volume_port: int = 18081
    log_weed_filer_port: int = 18889

    # --- write-side limits ---------------------------------------------------------------
    max_metadata_bytes: int = 64 * 1024
    max_metadata_depth: int = 8
    max_key_length: int = 1024
    wait_timeout_seconds: float = 30.0

    # --- blob path -------------------------------------------------------------------------
    max_blob_size: int = 5 * 1024**4  # S3's own object limit, 5 TiB
    min_part_size: int = 16 * 1024 * 1024
    max_in_flight_parts: int = 8
    upload_deadline_seconds: int = 3600
    s3_retry_attempts: int = 6
    #: blob workers and the embedded blob store lower their CPU priority by this much
    #: (0 = leave it): blob throughput gives way to metadata latency on a shared host (P4)
    blob_niceness: int = 10
    http_timeout_seconds: float = 30.0

    # --- projector -------------------------------------------------------------------------
    #: Postgres schema holding the read model (a replay builds a sibling and swaps names)
    read_model_schema: str = "blobledger"
    projector_batch_size: int = 5000
    #: False: the projector's and replay's commits return before their WAL reaches disk.
    #: Safe for a projection: a Postgres crash loses at most the newest whole transactions,
    #: checkpoints included, and the projector folds those events again from the log into
    #: the same rows. The fsync wait left every batch's latency (P5) and disk contention.
    projector_synchronous_commit: bool = False
    projector_group: str = "blobledger-projector"
    worker_group: str = "blobledger-blob-worker"
    consumer_session_timeout_ms: int = 6000

    # ------------------------------------------------------------------------------------
    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def commands_topic(self) -> str:
        return f"{self.topic_prefix}.blob-commands"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    @property
    def progress_topic(self) -> str:
        """Ephemeral upload progress (JSON, key = upload id) for ``blobledger put``; not folded."""
        return f"{self.topic_prefix}.blob-progress"

    @property
    def topics(self) -> tuple[str, str, str]:
        return (self.events_topic, self.commands_topic, self.dlq_topic)

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_postgres(self) -> bool:
        return self.postgres_dsn is None

    @property
    def embedded_s3(self) -> bool:
        return self.s3_endpoint is None

    @property
    def uses_embedded_stack(self) -> bool:
        return self.embedded_kafka or self.embedded_postgres or self.embedded_s3

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def dsn(self) -> str:
        return self.postgres_dsn or f"postgresql://postgres@127.0.0.1:{self.pg_port}/blobledger"

    @property
    def s3_url(self) -> str:
        return self.s3_endpoint or f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_s3_url(self) -> str:
        """The embedded broker's log store (its own SeaweedFS, never the blob store)."""
        return f"http://127.0.0.1:{self.log_s3_port}"

    @property
    def embedded_log_store(self) -> bool:
        """The embedded broker keeps its log in S3, so the stack runs its log store."""
        return self.embedded_kafka and self.broker_storage == "s3"

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (used by fixtures that start their own services)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``BLOBLEDGER_*`` keys; ``BLOBLEDGER_CONFIG`` names a TOML file
        whose keys (same names, lower case, no prefix) are read first and overridden by env."""
        return load_settings(cls, env, shared_keys=_testing_keys)

    def to_env(self) -> dict[str, str]:
        """The ``BLOBLEDGER_*`` variables that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            env[PREFIX + f.name.upper()] = json.dumps(dict(v)) if isinstance(v, Mapping) else str(v)
        return env

    def describe(self) -> dict[str, Any]:
        """Settings as plain JSON-able values, with the secret masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                str(v) if isinstance(v, Path) else dict(v) if isinstance(v, Mapping) else v
            )
        out["s3_secret_key"] = "***"
        return out


def load_settings(
    cls: type[_S],
    env: Mapping[str, str] | None = None,
    *,
    shared_keys: Callable[[], Collection[str]] = frozenset,
) -> _S:
    """Build the frozen dataclass ``cls`` from ``BLOBLEDGER_<FIELD>`` keys of ``env`` (default
    the process env) over the TOML file named by ``BLOBLEDGER_CONFIG``.

    Env keys ``cls`` does not know are ignored (they belong to someone else), but a file key
    is checked, so a typo fails loudly. Several settings objects read the one file
    (``Settings`` and the testing package's), so ``shared_keys`` returns the keys the others
    own; it is called only when the file holds a key ``cls`` does not know."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    config_file = env.get(PREFIX + "CONFIG")
    if config_file:
        try:
            raw.update(tomllib.loads(Path(config_file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigurationError(
                f"cannot read settings file {config_file}: {e}; fix or unset BLOBLEDGER_CONFIG"
            ) from e
    known = {f.name: f for f in fields(cls)}
    if set(raw) - set(known):
        others = set(shared_keys())
        raw = {name: value for name, value in raw.items() if name in known or name not in others}
    for key, value in env.items():
        if key.startswith(PREFIX) and key != PREFIX + "CONFIG":
            name = key[len(PREFIX) :].lower()
            if name in known:
                raw[name] = value
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigurationError(f"unknown settings {unknown}; known: {sorted(known)}")
    return cls(**{name: _coerce(name, known[name].type, value) for name, value in raw.items()})


def _testing_keys() -> frozenset[str]:
    """File keys of the testing package's settings (stack mode, Docker images): not typos.
    Imported only when the file has keys Settings does not know, so the product never
    loads the testing package otherwise."""
    from blobledger.infra.testing.settings import TestSettings

    return frozenset(f.name for f in fields(TestSettings))


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    """Turn a string (env) or TOML value into the field's type, with a clear error."""
    t = str(type_name)
    try:
        if "Mapping" in t:
            if isinstance(value, Mapping):
                return {str(k): str(v) for k, v in value.items()}
            value = str(value).strip()
            if value.startswith("{"):
                return {str(k): str(v) for k, v in json.loads(value).items()}
            pairs = [p for p in value.split(",") if p.strip()]
            return dict(p.split("=", 1) for p in pairs)
        if t == "Path":
            return Path(str(value))
        if t == "bool":
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word not in _BOOLS:
                raise ValueError(word)
            return _BOOLS[word]
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if "None" in t and (value == "" or value is None):
            return None
        return str(value)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigurationError(
            f"setting {PREFIX}{name.upper()}={value!r} is not a valid {t}"
        ) from e
