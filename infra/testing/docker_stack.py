"""Docker mode of the ``stack`` fixture: Kafka, Postgres and S3 as containers (testcontainers).

Why: blobledger's users run testcontainers suites against whatever Docker-API engine they
have, with public images. Our CI has no registry and no Docker, so the same code takes the
images that ``infra/containers/engine.sh`` builds locally and talks to podman's Docker API.
Images and broker flavor are test settings (``infra.testing.settings.TestSettings``), read from:

  BLOBLEDGER_DOCKER_KAFKA_IMAGE     default apache/kafka:3.9.0 (KRaft, single node)
  BLOBLEDGER_DOCKER_BROKER_FLAVOR   apache | tansu  (default: tansu if the image name says so)
  BLOBLEDGER_DOCKER_POSTGRES_IMAGE  default postgres:16 (localhost/blobledger-postgres:15 here)
  BLOBLEDGER_DOCKER_S3_IMAGE        default chrislusf/seaweedfs:4.48 (SeaweedFS `weed mini`);
                                    an image named *minio* runs `minio server` instead
  BLOBLEDGER_DOCKER_READY_TIMEOUT   seconds each service may take to answer (default 120)
  BLOBLEDGER_TEST_BROKER_STORAGE    tansu only: s3 (log in the S3 container, durable across
                                    a broker restart) or memory (default s3)

Every host port is picked free and bound 1:1, so a stopped and restarted container keeps its
endpoint and Kafka's advertised listener is exactly the address clients dial.
Containers carry ``io.blobledger.stack=<id>`` labels: teardown removes them even when a test
failed, and a later session reaps any that a killed session left (Ryuk is off on podman).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from blobledger.infra.freeports import free_ports
from blobledger.infra.settings import Settings
from blobledger.infra.testing import ServiceName
from blobledger.infra.testing.settings import TestSettings
from blobledger.schemas.errors import StackError

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

log = structlog.get_logger(__name__)

SERVICES: tuple[ServiceName, ...] = ("postgres", "s3", "kafka")
LABEL = "io.blobledger.stack"
LABEL_PID = "io.blobledger.owner-pid"
LABEL_HOST = "io.blobledger.owner-host"
#: sockets tried, in order, when DOCKER_HOST is unset
CANDIDATE_SOCKETS = ("/var/run/docker.sock", "/tmp/podman.sock")
PING_TIMEOUT = 3.0


# --- engine -------------------------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _ping_headers(base_url: str, timeout: float = PING_TIMEOUT) -> dict[str, str] | None:
    """GET /_ping without the docker SDK: its client negotiates the API version first,
    which costs ~1.5 s per client on podman. None when nothing answers."""
    try:
        if base_url.startswith("unix://"):
            conn: http.client.HTTPConnection = _UnixHTTPConnection(base_url[7:], timeout)
        elif base_url.startswith(("tcp://", "http://")):
            hostport = base_url.split("://", 1)[1].rstrip("/")
            conn = http.client.HTTPConnection(hostport, timeout=timeout)
        else:  # ssh://, npipe:// ...: let the SDK deal with it
            return _ping_with_sdk(base_url, timeout)
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            resp.read()
            return {k.lower(): v for k, v in resp.getheaders()} if resp.status == 200 else None
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None


def _ping_with_sdk(base_url: str, timeout: float) -> dict[str, str] | None:
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=int(max(1, timeout)))
        try:
            return {"server": "unknown"} if client.ping() else None
        finally:
            client.close()
    except Exception:
        return None


def engine_host() -> str | None:
    """The Docker API URL that answers: ``DOCKER_HOST`` when set (and only it, because the
    user chose it), else the first answering socket of :data:`CANDIDATE_SOCKETS`."""
    explicit = os.environ.get("DOCKER_HOST")
    if explicit:
        return explicit if _ping_headers(explicit) is not None else None
    for path in CANDIDATE_SOCKETS:
        if os.path.exists(path) and _ping_headers(f"unix://{path}") is not None:
            return f"unix://{path}"
    return None


def no_engine_reason() -> str:
    """Why no engine is usable, worded for a skip reason or an error."""
    explicit = os.environ.get("DOCKER_HOST")
    where = (
        f"DOCKER_HOST={explicit} does not answer"
        if explicit
        else "no Docker API answers on " + ", ".join(CANDIDATE_SOCKETS) + " (DOCKER_HOST unset)"
    )
    return f"{where}; start one with `bash infra/containers/engine.sh`"


def engine_available() -> bool:
    """True when a Docker-API engine answers a ping within a few seconds."""
    try:
        return engine_host() is not None
    except Exception:
        return False


@dataclass(frozen=True)
class Engine:
    url: str
    #: the API version the engine announced; handing it to every docker client skips the
    #: per-client version negotiation (~1.5 s each on podman)
    api_version: str | None
    podman: bool

    @property
    def client_kw(self) -> dict[str, Any]:
        return {"version": self.api_version} if self.api_version else {}


def configure_testcontainers() -> Engine:
    """Point testcontainers at the answering engine; on podman apply the verified recipe
    (no Ryuk: its image cannot be pulled here; docker_host mode; 127.0.0.1 as the host).
    Values the user already set win."""
    host = engine_host()
    if host is None:
        raise StackError(no_engine_reason(), service="docker")
    os.environ.setdefault("DOCKER_HOST", host)
    headers = _ping_headers(host) or {}
    podman = "libpod" in headers.get("server", "").lower() or "libpod-api-version" in headers
    if podman:
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        if host.startswith("unix://"):
            os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    # testcontainers reads its config once at import; bring it in line with the env now
    try:
        from testcontainers.core.config import ConnectionMode
        from testcontainers.core.config import testcontainers_config as tc
    except ImportError as e:
        raise StackError(
            f"docker mode needs testcontainers: pip install 'blobledger[test]' ({e})",
            service="docker",
        ) from e

    if os.environ.get("TESTCONTAINERS_RYUK_DISABLED"):
        tc.ryuk_disabled = os.environ["TESTCONTAINERS_RYUK_DISABLED"].lower() in (
            "1",
            "true",
            "yes",
        )
    if os.environ.get("TESTCONTAINERS_HOST_OVERRIDE"):
        tc.tc_host_override = os.environ["TESTCONTAINERS_HOST_OVERRIDE"]
    if os.environ.get("TESTCONTAINERS_CONNECTION_MODE"):
        tc.connection_mode_override = ConnectionMode(os.environ["TESTCONTAINERS_CONNECTION_MODE"])
    return Engine(url=host, api_version=headers.get("api-version") or None, podman=podman)


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DockerStackConfig:
    kafka_image: str = "apache/kafka:3.9.0"
    postgres_image: str = "postgres:16"
    s3_image: str = "chrislusf/seaweedfs:4.48"
    #: "apache" (KRaft env config) or "tansu" (command-line config)
    broker_flavor: str = "apache"
    #: tansu only: "s3" (log in the S3 container) or "memory"
    broker_storage: str = "s3"
    ready_timeout: float = 120.0
    #: replace a service's command (tests use it to make a container fail on purpose)
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: TestSettings) -> DockerStackConfig:
        """Images, flavor and timeouts from test settings (``BLOBLEDGER_DOCKER_*`` variables)."""
        kafka_image = settings.docker_kafka_image
        flavor = (
            settings.docker_broker_flavor
            or ("tansu" if "tansu" in kafka_image.lower() else "apache")
        ).lower()
        if flavor not in ("apache", "tansu"):
            raise StackError(
                f"BLOBLEDGER_DOCKER_BROKER_FLAVOR={flavor!r}: use apache or tansu", service="kafka"
            )
        storage = settings.test_broker_storage.lower()
        if storage not in ("s3", "memory"):
            raise StackError(f"broker storage {storage!r}: use s3 or memory", service="kafka")
        return cls(
            kafka_image=kafka_image,
            postgres_image=settings.docker_postgres_image,
            s3_image=settings.docker_s3_image,
            broker_flavor=flavor,
            broker_storage=storage,
            ready_timeout=settings.docker_ready_timeout,
        )

    def with_(self, **changes: Any) -> DockerStackConfig:
        return replace(self, **changes)

    @property
    def s3_is_minio(self) -> bool:
        return "minio" in self.s3_image.lower()

    @property
    def tansu_on_s3(self) -> bool:
        return self.broker_flavor == "tansu" and self.broker_storage == "s3"


# --- helpers --------------------------------------------------------------------------------
def _logs_tail(container: DockerContainer, lines: int = 30) -> str:
    try:
        raw = container.get_wrapped_container().logs(tail=lines)
        return raw.decode("utf-8", "replace").rstrip() or "(no output)"
    except Exception as e:
        return f"(logs unavailable: {e})"


def _status(container: DockerContainer) -> tuple[str, int | None]:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    state = wrapped.attrs.get("State") or {}
    return str(wrapped.status), state.get("ExitCode")


@dataclass
class _Service:
    """One container plus the probe that says it really serves (not just that it runs)."""

    name: ServiceName
    image: str
    container: DockerContainer
    probe: Callable[[], None]

    def wait_ready(self, timeout: float) -> float:
        """Poll the probe until it passes; fail fast if the container exits. Returns seconds."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last: Exception | None = None
        while True:
            try:
                status, code = _status(self.container)
            except Exception as e:
                raise StackError(
                    f"container of image {self.image} vanished while starting: {e}",
                    service=self.name,
                ) from e
            if status in ("exited", "dead"):
                raise StackError(
                    f"container of image {self.image} exited with code {code} before it was "
                    f"ready; last log lines:\n{_logs_tail(self.container)}",
                    service=self.name,
                )
            try:
                self.probe()
                return time.monotonic() - t0
            except Exception as e:
                last = e
            if time.monotonic() >= deadline:
                raise StackError(
                    f"container of image {self.image} did not become ready within {timeout:g} s "
                    f"(last probe error: {last}); last log lines:\n{_logs_tail(self.container)}",
                    service=self.name,
                ) from last
            time.sleep(0.5)


# --- probes -----------------------------------------------------------------------------------
def _kafka_probe(bootstrap: str) -> Callable[[], None]:
    def probe() -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": bootstrap,
                "broker.address.family": "v4",
                "socket.connection.setup.timeout.ms": 2000,
                "log_level": 0,  # a refused connection while starting is expected, not news
            }
        )
        md = admin.list_topics(timeout=3)
        if not md.brokers:
            raise RuntimeError("metadata lists no broker")

    return probe


def _postgres_probe(admin_dsn: str) -> Callable[[], None]:
    def probe() -> None:
        import psycopg

        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1").fetchone()
            # the embedded stack serves a `blobledger` database; match it
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = 'blobledger'"
            ).fetchone():
                conn.execute("CREATE DATABASE blobledger")

    return probe


def _s3_probe(settings: Settings, endpoint: str, buckets: Sequence[str]) -> Callable[[], None]:
    def probe() -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ClientError

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            region_name=settings.s3_region,
            config=Config(
                connect_timeout=3,
                read_timeout=5,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        for bucket in buckets:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError:
                client.create_bucket(Bucket=bucket)
                client.head_bucket(Bucket=bucket)

    return probe


# --- containers ---------------------------------------------------------------------------------
def _container(
    image: str, name: str, labels: dict[str, str], client_kw: dict[str, Any]
) -> DockerContainer:
    from testcontainers.core.container import DockerContainer

    c = DockerContainer(image, docker_client_kw=client_kw, name=name)
    c.with_kwargs(labels=labels)
    return c


def _bind(c: DockerContainer, container_port: int, host_port: int, host_ip: str | None) -> None:
    # loopback-only when the engine is local, like the embedded stack's ports
    c.ports[f"{container_port}/tcp"] = (host_ip, host_port) if host_ip else host_port  # type: ignore[assignment]


def _command(config: DockerStackConfig, service: str, default: Sequence[str]) -> list[str]:
    return list(config.commands.get(service, default))


S3_INTERNAL_ALIAS = "s3"


def _build_postgres(
    config: DockerStackConfig,
    port: int,
    host: str,
    bind_ip: str | None,
    labels: dict[str, str],
    suffix: str,
    client_kw: dict[str, Any],
) -> _Service:
    c = _container(config.postgres_image, f"blobledger-postgres-{suffix}", labels, client_kw)
    # trust: throwaway test databases; the password satisfies the official image's entrypoint
    c.with_env("POSTGRES_HOST_AUTH_METHOD", "trust").with_env("POSTGRES_PASSWORD", "postgres")
    # PGDATA comes from the image (official and ours both set it); fsync off: test speed only
    c.with_command(
        _command(config, "postgres", ["postgres", "-c", "fsync=off", "-c", "full_page_writes=off"])
    )
    _bind(c, 5432, port, bind_ip)
    admin_dsn = f"postgresql://postgres@{host}:{port}/postgres"
    return _Service("postgres", config.postgres_image, c, _postgres_probe(admin_dsn))


def _build_s3(
    config: DockerStackConfig,
    settings: Settings,
    port: int,
    host: str,
    bind_ip: str | None,
    labels: dict[str, str],
    suffix: str,
    network: Network | None,
    client_kw: dict[str, Any],
) -> _Service:
    c = _container(config.s3_image, f"blobledger-s3-{suffix}", labels, client_kw)
    if config.s3_is_minio:
        inner = 9000
        c.with_env("MINIO_ROOT_USER", settings.s3_access_key)
        c.with_env("MINIO_ROOT_PASSWORD", settings.s3_secret_key)
        default = ["server", "/data"]
    else:  # SeaweedFS all-in-one; the env credentials become its admin identity
        inner = 8333
        c.with_env("AWS_ACCESS_KEY_ID", settings.s3_access_key)
        c.with_env("AWS_SECRET_ACCESS_KEY", settings.s3_secret_key)
        default = [
            "mini",
            "-dir=/data",
            "-ip=127.0.0.1",
            "-ip.bind=0.0.0.0",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
    c.with_command(_command(config, "s3", default))
    _bind(c, inner, port, bind_ip)
    if network is not None:
        c.with_network(network).with_network_aliases(S3_INTERNAL_ALIAS)
    buckets = [settings.s3_bucket] + ([settings.broker_bucket] if config.tansu_on_s3 else [])
    return _Service("s3", config.s3_image, c, _s3_probe(settings, f"http://{host}:{port}", buckets))


def _s3_inner_port(config: DockerStackConfig) -> int:
    return 9000 if config.s3_is_minio else 8333


def _build_kafka(
    config: DockerStackConfig,
    settings: Settings,
    port: int,
    host: str,
    bind_ip: str | None,
    labels: dict[str, str],
    suffix: str,
    network: Network | None,
    client_kw: dict[str, Any],
) -> _Service:
    c = _container(config.kafka_image, f"blobledger-kafka-{suffix}", labels, client_kw)
    if config.broker_flavor == "tansu":
        if config.tansu_on_s3:
            storage = f"s3://{settings.broker_bucket}/"
            c.with_envs(
                AWS_ACCESS_KEY_ID=settings.s3_access_key,
                AWS_SECRET_ACCESS_KEY=settings.s3_secret_key,
                AWS_ENDPOINT=f"http://{S3_INTERNAL_ALIAS}:{_s3_inner_port(config)}",
                AWS_ALLOW_HTTP="true",
                AWS_DEFAULT_REGION=settings.s3_region,
            )
        else:
            storage = "memory://tansu/"
        default = [
            "broker",
            "--listener-url",
            f"tcp://0.0.0.0:{port}",
            "--advertised-listener-url",
            f"tcp://{host}:{port}",
            "--storage-engine",
            storage,
        ]
        c.with_command(_command(config, "kafka", default))
    else:  # Apache Kafka, single KRaft node: broker + controller in one process
        c.with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS=f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{port}",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@127.0.0.1:9093",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
        )
        if "kafka" in config.commands:
            c.with_command(list(config.commands["kafka"]))
    _bind(c, port, port, bind_ip)
    if network is not None:
        c.with_network(network)
    return _Service("kafka", config.kafka_image, c, _kafka_probe(f"{host}:{port}"))


# --- the running stack --------------------------------------------------------------------------
class DockerRunningStack:
    """:class:`infra.testing.RunningStack` over three containers."""

    mode = "docker"

    def __init__(
        self,
        settings: Settings,
        services: dict[str, _Service],
        stack_id: str,
        config: DockerStackConfig,
    ):
        self.settings = settings
        self.services = services
        self.stack_id = stack_id
        self.config = config

    def _service(self, name: str) -> _Service:
        try:
            return self.services[name]
        except KeyError:
            raise StackError(f"unknown service {name!r}; use one of {SERVICES}") from None

    def stop(self, service: ServiceName) -> None:
        """Stop the container but keep it (and its data and port) for :meth:`start`."""
        svc = self._service(service)
        try:
            svc.container.get_wrapped_container().stop(timeout=5)
        except Exception as e:
            raise StackError(
                f"cannot stop container of image {svc.image}: {e}", service=service
            ) from e
        log.info("docker_stack.stopped", service=service)

    def start(self, service: ServiceName) -> None:
        """Start it again and return once it answers a real client."""
        svc = self._service(service)
        try:
            svc.container.get_wrapped_container().start()
        except Exception as e:
            raise StackError(
                f"cannot start container of image {svc.image}: {e}", service=service
            ) from e
        took = svc.wait_ready(self.config.ready_timeout)
        log.info("docker_stack.restarted", service=service, seconds=round(took, 2))

    def container_ids(self) -> list[str]:
        return [s.container.get_wrapped_container().id for s in self.services.values()]


def _owner_labels(stack_id: str) -> dict[str, str]:
    return {LABEL: stack_id, LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()}


def reap_orphans(client_kw: dict[str, Any] | None = None) -> list[str]:
    """Remove blobledger containers (and networks) left by a session on this host that was
    killed before its teardown ran: the owner pid is gone. Ryuk does this on Docker; it is
    off on podman. Returns the removed container names."""
    import docker

    removed: list[str] = []
    client = docker.from_env(timeout=30, **(client_kw or {}))
    try:
        me = socket.gethostname()
        for c in client.containers.list(all=True, filters={"label": LABEL}):
            labels = c.labels or {}
            if labels.get(LABEL_HOST) != me:
                continue
            pid = int(labels.get(LABEL_PID, "0") or 0)
            if pid and _pid_alive(pid):
                continue
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
                removed.append(c.name)
        for n in client.networks.list(filters={"label": LABEL}):
            labels = n.attrs.get("Labels") or {}
            pid = int(labels.get(LABEL_PID, "0") or 0)
            if labels.get(LABEL_HOST) == me and not (pid and _pid_alive(pid)):
                with contextlib.suppress(Exception):
                    n.remove()
    finally:
        client.close()
    if removed:
        log.warning("docker_stack.reaped_orphans", containers=removed)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _teardown(services: list[_Service], network: Network | None) -> list[str]:
    """Remove every container (force, with volumes) and the network; collect, never raise."""
    problems: list[str] = []

    def remove(svc: _Service) -> None:
        try:
            svc.container.stop(force=True, delete_volume=True)
        except Exception as e:
            problems.append(f"{svc.name} ({svc.image}): {e}")

    # side by side: podman takes 1-3 s per forced removal
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        list(pool.map(remove, services))
    if network is not None:
        try:
            network.remove()
        except Exception as e:
            problems.append(f"network {network.name}: {e}")
    return problems


@contextlib.contextmanager
def docker_stack(
    settings: Settings, config: DockerStackConfig | None = None
) -> Iterator[DockerRunningStack]:
    """Start Postgres, S3 and Kafka containers, wait until each really serves, yield a
    :class:`DockerRunningStack`; remove everything on exit, also when startup or a test
    failed. A container that fails readiness raises :class:`StackError` naming its image.
    Without ``config``, images and flavor come from ``BLOBLEDGER_DOCKER_*`` variables."""
    engine = configure_testcontainers()
    config = config or DockerStackConfig.from_settings(TestSettings.from_env())
    kw = engine.client_kw
    with contextlib.suppress(Exception):
        reap_orphans(kw)

    from testcontainers.core.config import testcontainers_config as tc
    from testcontainers.core.docker_client import DockerClient

    t0 = time.monotonic()
    stack_id = uuid.uuid4().hex[:12]
    labels = _owner_labels(stack_id)
    host = tc.tc_host_override or DockerClient(**kw).host()
    bind_ip = "127.0.0.1" if host in ("127.0.0.1", "localhost") else None
    if host == "localhost":
        host = "127.0.0.1"  # librdkafka and psycopg would try ::1 first
    pg_port, s3_port, kafka_port = free_ports(3)

    network: Network | None = None
    started: list[_Service] = []
    try:
        if config.tansu_on_s3:
            from testcontainers.core.network import Network

            network = Network(docker_client_kw=kw, docker_network_kw={"labels": labels}).create()
        postgres = _build_postgres(config, pg_port, host, bind_ip, labels, stack_id, kw)
        s3 = _build_s3(config, settings, s3_port, host, bind_ip, labels, stack_id, network, kw)
        kafka = _build_kafka(
            config, settings, kafka_port, host, bind_ip, labels, stack_id, network, kw
        )
        timings: dict[str, float] = {}
        # Postgres and S3 boot side by side; the broker may keep its log in S3, so it waits.
        for svc in (postgres, s3):
            _start(svc, started)
        for svc in (postgres, s3):
            timings[svc.name] = svc.wait_ready(config.ready_timeout)
        _start(kafka, started)
        timings["kafka"] = kafka.wait_ready(config.ready_timeout)
        running = DockerRunningStack(
            settings.with_(
                kafka_bootstrap=f"{host}:{kafka_port}",
                postgres_dsn=f"postgresql://postgres@{host}:{pg_port}/blobledger",
                s3_endpoint=f"http://{host}:{s3_port}",
                # what the broker really does with its log (tests skip durability on memory)
                **(
                    {"broker_storage": config.broker_storage}
                    if config.broker_flavor == "tansu"
                    else {}
                ),
            ),
            {s.name: s for s in started},
            stack_id,
            config,
        )
        log.info(
            "docker_stack.ready",
            stack_id=stack_id,
            seconds=round(time.monotonic() - t0, 2),
            ready_seconds={k: round(v, 2) for k, v in timings.items()},
            images={s.name: s.image for s in started},
            flavor=config.broker_flavor,
            broker_storage=config.broker_storage if config.broker_flavor == "tansu" else None,
        )
        yield running
    finally:
        failing = sys.exc_info()[0] is not None
        problems = _teardown(started, network)
        if problems:
            log.error("docker_stack.teardown_failed", stack_id=stack_id, problems=problems)
            if not failing:
                raise StackError(
                    "teardown left things behind: " + "; ".join(problems), service="docker"
                )


def _start(svc: _Service, started: list[_Service]) -> None:
    """Create and start one container; translate engine errors (missing image...)."""
    try:
        svc.container.start()
    except Exception as e:
        # a created-but-not-started container still needs removing
        if svc.container._container is not None:
            started.append(svc)
        hint = ""
        if "not found" in str(e).lower() or "no such image" in str(e).lower():
            hint = " (image missing? on this machine run `bash infra/containers/engine.sh`)"
        raise StackError(
            f"cannot start container of image {svc.image}: {e}{hint}", service=svc.name
        ) from e
    started.append(svc)
