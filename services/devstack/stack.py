"""Starts and stops the system's services as real processes against a given Kafka broker.

Used by `make run` and by the end-to-end tests, so both exercise the same processes the
deployment runs: the gRPC intake, the router, the lifecycle tracker, the timeline, enforcement
and victim services.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.broker import free_port, orphan_guard_prefix
from plumbing.grpc_auth import authenticated_channel
from plumbing.healthcheck import group_assigned


class ServiceFailed(RuntimeError):
    """A service exited or did not become ready; the message quotes the end of its log."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service and how to tell it is ready."""

    name: str
    module_args: tuple[str, ...]
    consumer_group: str | None = None
    grpc_health: bool = False


SERVICES = (
    ServiceSpec("referral-intake", ("referral", "intake"), grpc_health=True),
    ServiceSpec("referral-router", ("referral", "router"), consumer_group="referral-router"),
    ServiceSpec("referral-tracker", ("referral", "tracker"), consumer_group="referral-tracker"),
    ServiceSpec("referral-timeline", ("referral", "timeline"), consumer_group="referral-timeline"),
    ServiceSpec("enforcement", ("enforcement",), consumer_group="enforcement"),
    ServiceSpec("victim-services", ("victim_services",), consumer_group="victim-services"),
)


@dataclass
class RunningService:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    instance_id: str
    log_file: IO[bytes] = field(repr=False)


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class ServiceStack:
    """The four service processes, configured through environment variables only."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        grpc_address: str,
        data_dir: Path,
        trace_dir: Path,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        progress: Callable[[str], None] = lambda _message: None,
        partner_grpc_address: str | None = None,
        query_grpc_address: str | None = None,
        victim_services_grpc_address: str | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
        admin_settings: dict[str, Any] | None = None,
        intake_ca: bytes | None = None,
    ) -> None:
        """`service_env` adds variables for one service (by name: its Kafka credentials);
        `admin_settings` are the kafka-python security settings readiness checks use;
        `intake_ca` is the authority to trust when the intake speaks TLS."""
        self.bootstrap_servers = bootstrap_servers
        self.grpc_address = grpc_address
        self.partner_grpc_address = partner_grpc_address or f"127.0.0.1:{free_port()}"
        self.query_grpc_address = query_grpc_address or f"127.0.0.1:{free_port()}"
        self.victim_services_grpc_address = (
            victim_services_grpc_address or f"127.0.0.1:{free_port()}"
        )
        self.log_dir = log_dir
        self.progress = progress
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "REFERRAL_GRPC_ADDR": grpc_address,
            "REFERRAL_PARTNER_GRPC_ADDR": self.partner_grpc_address,
            "REFERRAL_QUERY_GRPC_ADDR": self.query_grpc_address,
            "VICTIM_SERVICES_GRPC_ADDR": self.victim_services_grpc_address,
            "CTROUTE_DATA_DIR": str(data_dir),
            "CTROUTE_TRACE_DIR": str(trace_dir),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.service_env = service_env or {}
        self.admin_settings = admin_settings or {}
        self.intake_ca = intake_ca
        self.running: dict[str, RunningService] = {}
        self._starts = 0

    def start(self, timeout: float = 90) -> None:
        """Start every service and wait until each is ready (consumers joined, gRPC serving)."""
        for spec in SERVICES:
            self.start_service(spec)
        deadline = time.monotonic() + timeout
        for spec in SERVICES:
            self.wait_ready(spec, deadline)

    def start_service(self, spec: ServiceSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        log_file = log_path.open("ab")
        # A new instance id per start: readiness waits for this process's own group member,
        # not one a killed predecessor left behind until its session times out.
        self._starts += 1
        instance_id = f"{spec.name}-{self._starts}"
        process = subprocess.Popen(
            [*orphan_guard_prefix(), sys.executable, "-m", *spec.module_args],
            env={
                **self.env,
                **self.service_env.get(spec.name, {}),
                "CTROUTE_INSTANCE_ID": instance_id,
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal reaches only the supervisor, which then
            # stops the services in order (the orphan guard still ends them if it dies).
            start_new_session=True,
        )
        self.running[spec.name] = RunningService(spec, process, log_path, instance_id, log_file)
        self.progress(f"{spec.name}: started (pid {process.pid}, log {log_path})")

    def wait_ready(self, spec: ServiceSpec, deadline: float) -> None:
        service = self.running[spec.name]
        started = time.monotonic()
        while True:
            if service.process.poll() is not None:
                raise ServiceFailed(
                    f"{spec.name} exited with code {service.process.returncode}; "
                    f"end of {service.log_path}:\n{_log_tail(service.log_path)}"
                )
            if self._is_ready(service):
                self.progress(f"{spec.name}: ready in {time.monotonic() - started:.1f}s")
                return
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{spec.name} was not ready in time; end of {service.log_path}:\n"
                    f"{_log_tail(service.log_path)}"
                )
            time.sleep(0.2)

    def _is_ready(self, service: RunningService) -> bool:
        spec = service.spec
        if spec.grpc_health:
            with self._intake_channel() as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                except grpc.RpcError:
                    return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        assert spec.consumer_group is not None
        problem = group_assigned(
            self.bootstrap_servers,
            spec.consumer_group,
            timeout=3,
            member_client_id=f"{spec.consumer_group}-{service.instance_id}",
            client_settings=self.admin_settings,
        )
        return problem is None

    def _intake_channel(self) -> grpc.Channel:
        if self.intake_ca is None:
            return grpc.insecure_channel(self.grpc_address)
        return authenticated_channel(self.grpc_address, self.intake_ca, None)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send a signal to one service and wait for it to exit (SIGKILL: a crash)."""
        service = self.running.pop(name)
        service.process.send_signal(sig)
        service.process.wait(timeout=30)
        service.log_file.close()
        self.progress(f"{name}: {sig.name} sent, exited with {service.process.returncode}")

    def restart(self, name: str, timeout: float = 90) -> None:
        """Start a service that was killed, and wait until it is ready again."""
        spec = next(spec for spec in SERVICES if spec.name == name)
        self.start_service(spec)
        self.wait_ready(spec, time.monotonic() + timeout)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM every service, wait for a clean exit, SIGKILL what does not stop."""
        for service in self.running.values():
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in self.running.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                service.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait(timeout=10)
            service.log_file.close()
            self.progress(f"{service.spec.name}: stopped")
        self.running.clear()
