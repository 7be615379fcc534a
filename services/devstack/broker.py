"""A real single-node Apache Kafka broker for `make run` and the test suite.

Why this exists: the services talk to each other only through Kafka, and the tests should
exercise the same broker (partitioning, consumer groups, offsets, restarts) instead of a
mock. The development and CI machines have OpenJDK 17 and Maven but no Docker engine and no
access to Kafka's release tarballs, while Kafka's broker is published on Maven Central as
ordinary jars. So this module

* assembles the broker's classpath once with Maven from ``deploy/kafka/pom.xml`` into the
  git-ignored ``deploy/kafka/lib`` (:func:`ensure_kafka_jars`),
* formats a KRaft storage directory and runs ``kafka.Kafka`` in combined broker+controller
  mode as a child process in its own process group (:class:`EmbeddedKafka`), and
* waits for readiness by asking the broker for cluster metadata, not by sleeping.

Command line (the Makefile uses ``fetch`` to prefetch the jars)::

    python -m devstack.broker fetch
    python -m devstack.broker run [--port 9092] [--controller-port 9093] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, Self

from kafka import KafkaAdminClient
from kafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
)

from plumbing.access import ADMIN_PRINCIPAL
from plumbing.kafka import SASL_MECHANISM, sasl_settings
from plumbing.kafka_access import new_password
from plumbing.topics import configs as topic_configs

__all__ = [
    "BrokerError",
    "EmbeddedKafka",
    "PrerequisiteMissing",
    "Progress",
    "ensure_kafka_jars",
    "find_project_root",
    "free_port",
    "kafka_version",
    "main",
]

Progress = Callable[[str], None]
"""Receives one complete progress line (already prefixed with ``kafka:``)."""

KAFKA_DIR: Final = Path("deploy", "kafka")
"""Where the pom, the log4j2 configuration and the fetched ``lib/`` live, from the project root."""

MIN_JAVA_MAJOR: Final = 17
BROKER_JVM_OPTS: Final = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# The storage formatter runs for about a second: the C1-only JIT starts it faster.
_TOOL_JVM_OPTS: Final = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

_INSTALL_JAVA: Final = "install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)"
_INSTALL_MAVEN: Final = "install Maven (apt-get install maven)"
_STAMP_NAME: Final = ".fetched"
_LOCK_NAME: Final = ".fetch.lock"
_LOG_TAIL_LINES: Final = 20
_POM_NS: Final = "{http://maven.apache.org/POM/4.0.0}"


class PrerequisiteMissing(RuntimeError):
    """A tool the broker needs (java, mvn) is missing; the message says what to install."""


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started or used."""


def _default_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- prerequisites


@functools.cache
def _java() -> str:
    """Path of a ``java`` of at least version 17 (``$JAVA_HOME`` first, then ``$PATH``)."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    java = str(candidate) if candidate is not None and candidate.is_file() else shutil.which("java")
    if java is None:
        raise PrerequisiteMissing(f"java not found: {_INSTALL_JAVA}")
    try:
        result = subprocess.run(
            [java, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrerequisiteMissing(f"{java} does not run ({exc}): {_INSTALL_JAVA}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise PrerequisiteMissing(f"cannot tell the version of {java}: {_INSTALL_JAVA}")
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA_MAJOR:
        raise PrerequisiteMissing(
            f"java {major} found at {java}, Kafka needs {MIN_JAVA_MAJOR}+: {_INSTALL_JAVA}"
        )
    return java


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PrerequisiteMissing(f"mvn not found: {_INSTALL_MAVEN}")
    return mvn


# --------------------------------------------------------------------------- jars


def kafka_version(project_root: Path) -> str:
    """The Kafka version pinned in ``deploy/kafka/pom.xml`` (its ``kafka.version`` property)."""
    pom = project_root / KAFKA_DIR / "pom.xml"
    root = ET.parse(pom).getroot()  # noqa: S314 - the project's own pom, not untrusted input
    element = root.find(f"{_POM_NS}properties/{_POM_NS}kafka.version")
    if element is None or not (element.text or "").strip():
        raise BrokerError(f"{pom} has no <kafka.version> property")
    return (element.text or "").strip()


def _stamp_text(pom: Path, version: str) -> str:
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    return f"kafka {version} pom-sha256 {digest}\n"


def _jars_current(lib: Path, stamp_text: str, version: str) -> bool:
    stamp = lib / _STAMP_NAME
    return (
        stamp.is_file()
        and stamp.read_text(encoding="utf-8") == stamp_text
        and (lib / f"kafka_2.13-{version}.jar").is_file()
    )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise fetches between processes (parallel test workers, `make run` and tests)."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kafka_jars(project_root: Path, *, progress: Progress | None = None) -> Path:
    """Make sure ``deploy/kafka/lib`` holds the broker's runtime classpath; return that directory.

    Runs ``mvn dependency:copy-dependencies`` only when the stamp file in ``lib/`` does not
    match the current ``pom.xml`` (first run, or the pinned version changed); stale jars are
    deleted first so two Kafka versions never share the classpath. Maven caches downloads in
    ``~/.m2``, so a refetch after ``rm -rf deploy/kafka/lib`` is offline and takes seconds.

    Raises :class:`PrerequisiteMissing` when ``java`` (always needed) or ``mvn`` (needed only
    to fetch) is missing, and :class:`BrokerError` when Maven fails.
    """
    say = progress or _default_progress
    kafka_dir = (project_root / KAFKA_DIR).resolve()
    pom = kafka_dir / "pom.xml"
    if not pom.is_file():
        raise BrokerError(f"{pom} not found: is {project_root} the project root?")
    version = kafka_version(project_root)
    stamp_text = _stamp_text(pom, version)
    lib = kafka_dir / "lib"
    _java()
    if _jars_current(lib, stamp_text, version):
        return lib
    mvn = _mvn()
    lib.mkdir(parents=True, exist_ok=True)
    with _exclusive(lib / _LOCK_NAME):
        if _jars_current(lib, stamp_text, version):  # another process fetched meanwhile
            return lib
        say(f"kafka: fetching jars from Maven Central… (Kafka {version}, into {lib})")
        (lib / _STAMP_NAME).unlink(missing_ok=True)
        for stale in lib.glob("*.jar"):
            stale.unlink()
        # outputDirectory must be absolute: Maven resolves a relative one against the pom's
        # directory, not the working directory.
        command = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not (lib / f"kafka_2.13-{version}.jar").is_file():
            raise BrokerError(
                f"fetching Kafka {version} jars failed (mvn exit code {result.returncode})"
                + _format_tail("mvn output", result.stdout.splitlines())
            )
        (lib / _STAMP_NAME).write_text(stamp_text, encoding="utf-8")
    return lib


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_pair() -> tuple[int, int]:
    """Two different free ports: a broker's client listener and its controller's."""
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    return port, controller_port


def _new_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 of 16 bytes, no padding)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):  # would be parsed as a command-line option
            return cluster_id


def _read_properties(path: Path) -> dict[str, str]:
    properties: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


def _port_open(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _format_tail(title: str, lines: Sequence[str]) -> str:
    tail = [line for line in lines if line.strip()][-_LOG_TAIL_LINES:]
    if not tail:
        return f"\n--- {title}: (empty) ---"
    return f"\n--- last {len(tail)} lines of {title} ---\n" + "\n".join(tail)


_ERROR_LINE: Final = re.compile(
    r"^\[[^]]*\] (?:ERROR|FATAL) "  # a log4j event at ERROR or FATAL
    r"|^Caused by: "
    r"|^\S+(?:Exception|Error): "  # the message line of a stack trace
)


def _format_errors(title: str, lines: Sequence[str], limit: int = 8) -> str:
    """The first distinct error lines: the tail of a log is often just a stack trace."""
    seen: list[str] = []
    for line in lines:
        if _ERROR_LINE.search(line) and line not in seen:
            seen.append(line)
            if len(seen) == limit:
                break
    return f"\n--- first errors in {title} ---\n" + "\n".join(seen) if seen else ""


def _read_from(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def orphan_guard_prefix() -> list[str]:
    """Make the broker get SIGTERM if this process dies without stopping it (Linux only).

    The parent-death signal fires when the *thread* that started the child exits, so it is
    only used when starting from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return []
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


_RUNNING: set[EmbeddedKafka] = set()


@atexit.register
def _stop_running_brokers() -> None:
    for broker in list(_RUNNING):
        with contextlib.suppress(Exception):
            broker.stop(timeout=15)


# --------------------------------------------------------------------------- broker


class EmbeddedKafka:
    """A single-node KRaft Kafka broker (combined broker+controller) run as a child process.

    Layout under ``data_dir``: ``server.properties`` (rewritten on every start), ``data/``
    (the log dir: ``meta.properties``, topics, the metadata log) and ``logs/`` (``server.log``
    at WARN from log4j, ``broker.out`` for the JVM's own stdout/stderr). The storage is
    formatted only when ``data/meta.properties`` does not exist yet, so starting again on the
    same ``data_dir`` keeps topics, records and committed offsets.

    ``sasl=True`` makes it an authenticated broker with ACLs: clients connect over
    SASL_PLAINTEXT with SCRAM-SHA-512, the controller listener uses SASL/PLAIN, Kafka's
    StandardAuthorizer denies whatever no ACL allows, and the bootstrap principal ``admin`` (the
    only super user) gets a random password kept in ``admin.password`` (mode 0600) beside the
    storage, so a restart on the same ``data_dir`` authenticates again. :meth:`client_config`
    then carries the admin's credentials.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        controller_port: int,
        *,
        project_root: Path,
        sasl: bool = False,
        progress: Progress | None = None,
    ) -> None:
        if port == controller_port:
            raise ValueError(f"port and controller_port must differ (both {port})")
        self.data_dir: Final = Path(data_dir).resolve()
        self.port: Final = port
        self.controller_port: Final = controller_port
        self.project_root: Final = Path(project_root).resolve()
        self.sasl: Final = sasl
        self._say: Progress = progress or _default_progress
        self._process: subprocess.Popen[bytes] | None = None
        self._cluster_id: str | None = None
        self._server_log_offset = 0
        self._stdout_log_offset = 0
        self._admin_password: str | None = None

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self._process is not None else "stopped"
        return f"EmbeddedKafka({self.bootstrap_servers}, data_dir={self.data_dir}, {state})"

    # ---- properties

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``, for any Kafka client's ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def storage_dir(self) -> Path:
        """Kafka's ``log.dirs``: topic partitions, metadata log, ``meta.properties``."""
        return self.data_dir / "data"

    @property
    def logs_dir(self) -> Path:
        """``kafka.logs.dir``: ``server.log`` (log4j, WARN and above) and ``broker.out``."""
        return self.data_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def cluster_id(self) -> str | None:
        """The KRaft cluster id, known once the storage is formatted (after :meth:`start`)."""
        return self._cluster_id

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def admin_password_path(self) -> Path:
        """The super user's password (SASL mode), readable by this user only."""
        return self.data_dir / "admin.password"

    def admin_password(self) -> str:
        """The super user's password (SASL mode), created on first use."""
        if self._admin_password is None:
            path = self.admin_password_path
            if not path.is_file():
                self.data_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(new_password())
            self._admin_password = path.read_text(encoding="utf-8").strip()
        return self._admin_password

    def client_config(self) -> dict[str, Any]:
        """Connection settings for kafka-python clients: the super user's, in SASL mode."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.sasl:
            config.update(sasl_settings(ADMIN_PRINCIPAL, self.admin_password()))
        return config

    def server_properties(self) -> dict[str, str]:
        """The broker configuration written to ``server.properties`` on each start."""
        properties = self._plaintext_properties()
        if self.sasl:
            properties.update(self._sasl_properties())
        return properties

    def _sasl_properties(self) -> dict[str, str]:
        password = self.admin_password()
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return {
            "listeners": (
                f"SASL_PLAINTEXT://127.0.0.1:{self.port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": (
                "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
            ),
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
            f"listener.name.sasl_plaintext.{SASL_MECHANISM.lower()}.sasl.jaas.config": (
                f'{scram} required username="{ADMIN_PRINCIPAL}" password="{password}";'
            ),
            # SCRAM is not available on the KRaft controller listener: PLAIN, admin only.
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required username="{ADMIN_PRINCIPAL}" password="{password}" '
                f'user_{ADMIN_PRINCIPAL}="{password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _plaintext_properties(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.storage_dir),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "log.cleaner.dedupe.buffer.size": "16777216",
        }

    # ---- lifecycle

    def start(self, timeout: float = 60) -> None:
        """Start the broker and return once it answers metadata requests.

        ``timeout`` covers formatting, JVM start-up and readiness; a first-time jar fetch
        (:func:`ensure_kafka_jars`) comes before it and is not counted. If the broker exits
        or is not ready in time, it is stopped and :class:`BrokerError` is raised with the
        last lines of its logs.
        """
        if self._process is not None:
            if self.running:
                raise BrokerError(f"{self!r} is already running")
            self._process = None
        lib = ensure_kafka_jars(self.project_root, progress=self._say)
        started = time.monotonic()
        deadline = started + timeout
        java = _java()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        meta = self.storage_dir / "meta.properties"
        fresh = not meta.is_file()
        if self.sasl and not fresh and not self.admin_password_path.is_file():
            raise BrokerError(
                f"the storage in {self.storage_dir} was formatted without SASL, so it has no "
                f"admin credential: remove {self.data_dir} and start again"
            )
        # The file holds passwords in SASL mode: only this user may read it.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(
                "# Written by devstack.broker on every start; edits are overwritten.\n"
                + "".join(f"{key}={value}\n" for key, value in self.server_properties().items())
            )
        server_log = self.logs_dir / "server.log"
        stdout_log = self.logs_dir / "broker.out"
        self._server_log_offset = _file_size(server_log)
        self._stdout_log_offset = _file_size(stdout_log)

        if fresh:
            self._format(java, lib, deadline)
        self._cluster_id = _read_properties(meta).get("cluster.id")
        reuse = "new storage" if fresh else "reusing storage"
        self._say(
            f"kafka: broker starting on {self.bootstrap_servers} (data in {self.data_dir}, {reuse})"
        )
        command = [
            *orphan_guard_prefix(),
            java,
            *BROKER_JVM_OPTS,
            *self._logging_opts(),
            "-cp",
            str(lib / "*"),
            "kafka.Kafka",
            str(self.config_path),
        ]
        with stdout_log.open("ab") as out:
            self._process = subprocess.Popen(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        _RUNNING.add(self)
        try:
            self._wait_ready(deadline, timeout)
        except BaseException:
            self._terminate(grace=5)
            raise
        self._say(f"kafka: broker ready in {time.monotonic() - started:.1f}s")

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker (SIGTERM to its process group, SIGKILL after ``timeout``); idempotent."""
        if self._process is None:
            return
        began = time.monotonic()
        killed = self._terminate(grace=timeout)
        how = "killed after SIGTERM timed out" if killed else "stopped"
        self._say(f"kafka: broker {how} in {time.monotonic() - began:.1f}s")

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the broker exits (or ``timeout`` passes); return its exit code or None."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- topics

    def create_topics(self, specs: Sequence[tuple[str, int]], timeout: float = 30) -> list[str]:
        """Create topics ``(name, partitions)`` with replication factor 1; return the new names.

        Topics that already exist are left alone (whatever their partition count). Returns
        once the new topics have a leader for every partition.
        """
        if not specs:
            return []
        request = {
            name: {
                "num_partitions": partitions,
                "replication_factor": 1,
                "configs": topic_configs(name),
            }
            for name, partitions in specs
        }
        timeout_ms = int(timeout * 1000)
        admin = self._admin_client(timeout_ms)
        try:
            response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
            created: list[str] = []
            failures: list[str] = []
            for topic in response["topics"]:
                code = topic["error_code"]
                if code == 0:
                    created.append(topic["name"])
                elif code != TopicAlreadyExistsError.errno:
                    failures.append(f"{topic['name']}: {topic['error_message'] or code}")
            if failures:
                raise BrokerError("creating topics failed: " + "; ".join(failures))
            if created:
                admin.wait_for_topics(created, timeout_ms=timeout_ms)
            return created
        finally:
            admin.close()

    # ---- internals

    def _admin_client(self, timeout_ms: int, **overrides: Any) -> Any:
        config: dict[str, Any] = {
            **self.client_config(),
            "client_id": "devstack-broker",
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": timeout_ms,
            **overrides,
        }
        return KafkaAdminClient(**config)

    def _logging_opts(self) -> list[str]:
        log4j = self.project_root / KAFKA_DIR / "log4j2.yaml"
        return [f"-Dkafka.logs.dir={self.logs_dir}", f"-Dlog4j2.configurationFile={log4j}"]

    def _format(self, java: str, lib: Path, deadline: float) -> None:
        command = [
            java,
            *_TOOL_JVM_OPTS,
            *self._logging_opts(),
            "-cp",
            str(lib / "*"),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            _new_cluster_id(),
            "--config",
            str(self.config_path),
        ]
        if self.sasl:
            admin = f"name={ADMIN_PRINCIPAL},password={self.admin_password()}"
            command += ["--add-scram", f"{SASL_MECHANISM}=[{admin}]"]
        try:
            result = subprocess.run(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"formatting Kafka storage in {self.storage_dir} timed out") from exc
        if result.returncode != 0 or not (self.storage_dir / "meta.properties").is_file():
            raise BrokerError(
                f"formatting Kafka storage in {self.storage_dir} failed "
                f"(exit code {result.returncode})"
                + _format_tail("StorageTool output", result.stdout.splitlines())
            )

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        """Poll until the broker answers DescribeCluster for *our* cluster with itself unfenced."""
        process = self._process
        assert process is not None
        last_problem = "no answer yet"
        port_open = False
        while True:
            # Waiting on the process is the pause between attempts and notices a crash at once.
            try:
                code = process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            else:
                raise BrokerError(
                    f"kafka broker exited with code {code} during start-up" + self._log_tail()
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"kafka broker on {self.bootstrap_servers} not ready after {timeout:g}s "
                    f"({last_problem})" + self._log_tail()
                )
            if not port_open:
                port_open = _port_open(self.port, timeout=min(remaining, 1.0))
                if not port_open:
                    last_problem = f"port {self.port} not listening yet"
                    continue
            attempt_ms = max(int(min(remaining, 2.0) * 1000), 100)
            try:
                admin = self._admin_client(attempt_ms, reconnect_backoff_max_ms=200)
                try:
                    cluster = admin.describe_cluster()
                finally:
                    admin.close()
            except (KafkaError, OSError) as exc:
                last_problem = f"metadata request failed: {exc!r}"
                continue
            if cluster.get("cluster_id") != self._cluster_id:
                last_problem = (
                    f"port {self.port} answers for cluster {cluster.get('cluster_id')!r}, "
                    f"expected {self._cluster_id!r} (another broker on that port?)"
                )
                continue
            brokers = cluster.get("brokers") or []
            if any(not broker.get("is_fenced", False) for broker in brokers):
                return
            last_problem = "broker registered but still fenced"

    def _terminate(self, grace: float) -> bool:
        """Stop the process group; return True if SIGKILL was needed. Always reaps the child."""
        process = self._process
        if process is None:
            return False
        killed = False
        try:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    killed = True
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
        except BaseException:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            self._process = None
            _RUNNING.discard(self)
        return killed

    def _log_tail(self) -> str:
        server_log = self.logs_dir / "server.log"
        stdout_log = self.logs_dir / "broker.out"
        server_lines = _read_from(server_log, self._server_log_offset)
        text = _format_errors(str(server_log), server_lines)
        text += _format_tail(str(server_log), server_lines)
        stdout_lines = _read_from(stdout_log, self._stdout_log_offset)
        if any(line.strip() for line in stdout_lines):
            text += _format_tail(str(stdout_log), stdout_lines)
        return text


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


# --------------------------------------------------------------------------- command line


def find_project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd, then this file) with the pom."""
    origins = [start] if start is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for origin in origins:
        for directory in (origin.resolve(), *origin.resolve().parents):
            if (directory / KAFKA_DIR / "pom.xml").is_file():
                return directory
    raise BrokerError(f"no {KAFKA_DIR / 'pom.xml'} found above {', '.join(map(str, origins))}")


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.broker",
        description="Fetch the Kafka broker jars, or run a local single-node Kafka broker.",
    )
    parser.add_argument(
        "--project-root", type=Path, default=None, help="default: found from the cwd"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the broker jars into deploy/kafka/lib (once)")
    run = commands.add_parser("run", help="run a broker in the foreground until interrupted")
    run.add_argument("--port", type=int, default=9092)
    run.add_argument("--controller-port", type=int, default=9093)
    run.add_argument("--data-dir", type=Path, default=None, help="default: .run/kafka")
    run.add_argument("--timeout", type=float, default=60.0, help="start-up deadline, seconds")
    args = parser.parse_args(argv)

    try:
        root: Path = args.project_root or find_project_root()
        if args.command == "fetch":
            ensure_kafka_jars(root)
            return 0
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        broker = EmbeddedKafka(
            args.data_dir or root / ".run" / "kafka",
            args.port,
            args.controller_port,
            project_root=root,
        )
        try:
            broker.start(timeout=args.timeout)
            code = broker.wait()
            _default_progress(f"kafka: broker exited unexpectedly with code {code}")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            broker.stop()
    except (PrerequisiteMissing, BrokerError) as exc:
        _default_progress(f"kafka: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
