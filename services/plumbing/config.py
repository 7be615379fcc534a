"""Configuration, read only from environment variables, with defaults that work on a laptop.

Every variable the system reads is defined here so the operations guide has one place to list.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"


def kafka_bootstrap_servers() -> str:
    """Comma-separated host:port list of the Kafka brokers (`KAFKA_BOOTSTRAP_SERVERS`)."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA_BOOTSTRAP)


def instance_id() -> str:
    """This process's name among the instances of its service (`CTROUTE_INSTANCE_ID`); the
    host name and process id by default (in Kubernetes, the pod name). Part of every Kafka
    client id, so an operator can tell a restarted instance from the member it replaced."""
    return os.environ.get("CTROUTE_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"


def grpc_address() -> str:
    """Address the referral service's gRPC server listens on (`REFERRAL_GRPC_ADDR`)."""
    return os.environ.get("REFERRAL_GRPC_ADDR", DEFAULT_GRPC_ADDRESS)


def partner_grpc_address() -> str:
    """Address of the partner status API, served by the lifecycle tracker
    (`REFERRAL_PARTNER_GRPC_ADDR`)."""
    return os.environ.get("REFERRAL_PARTNER_GRPC_ADDR", "127.0.0.1:50052")


def query_grpc_address() -> str:
    """Address of the referral query API, served by the timeline service
    (`REFERRAL_QUERY_GRPC_ADDR`)."""
    return os.environ.get("REFERRAL_QUERY_GRPC_ADDR", "127.0.0.1:50053")


def trace_store_url() -> str | None:
    """Database of the trace store (`CTROUTE_TRACE_STORE_URL`, `postgresql://...`); unset means
    the SQLite file `trace-store.sqlite3` in the data folder."""
    return os.environ.get("CTROUTE_TRACE_STORE_URL") or None


def victim_services_grpc_address() -> str:
    """Address of the victim-services consent API, where victim specialists record consent
    (`VICTIM_SERVICES_GRPC_ADDR`)."""
    return os.environ.get("VICTIM_SERVICES_GRPC_ADDR", "127.0.0.1:50054")


def audit_log_path() -> Path:
    """The audit chain's SQLite file (`CTROUTE_AUDIT_LOG`, default in the data folder)."""
    value = os.environ.get("CTROUTE_AUDIT_LOG")
    return Path(value) if value else data_dir() / "audit.sqlite3"


def data_dir() -> Path:
    """Folder for the services' local state such as the intake ledger (`CTROUTE_DATA_DIR`)."""
    return Path(os.environ.get("CTROUTE_DATA_DIR", ".run/data"))


def trace_dir() -> Path:
    """Folder for local span files when no OTLP endpoint is set (`CTROUTE_TRACE_DIR`)."""
    return Path(os.environ.get("CTROUTE_TRACE_DIR", ".run/traces"))


def otlp_endpoint() -> str | None:
    """OTLP gRPC endpoint for spans (`OTEL_EXPORTER_OTLP_ENDPOINT`); unset means local files."""
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def tracing_enabled() -> bool:
    """Tracing is on unless `CTROUTE_TRACING=off` (the benchmark measures its cost)."""
    return os.environ.get("CTROUTE_TRACING", "on").lower() not in {"off", "0", "false"}


def correlation_key() -> bytes:
    """Secret for fingerprinting identifiers in the correlation index (`CTROUTE_CORRELATION_KEY`).

    Set it in any real deployment; the default only suits a laptop.
    """
    return os.environ.get("CTROUTE_CORRELATION_KEY", "ctroute-local-development-key").encode()


def acknowledgement_deadlines() -> str:
    """Acknowledgement deadlines per priority (`CTROUTE_ACK_DEADLINES`), e.g.
    "URGENT=15m,HIGH=4h,ROUTINE=2bd"; unset means the default SLA."""
    return os.environ.get("CTROUTE_ACK_DEADLINES", "")


def policy_path() -> Path | None:
    """Routing and release policy file (`CTROUTE_POLICY`); unset means the shipped default."""
    value = os.environ.get("CTROUTE_POLICY")
    return Path(value) if value else None


def kafka_security_protocol() -> str:
    """How clients connect to Kafka (`CTROUTE_KAFKA_SECURITY_PROTOCOL`): `PLAINTEXT` (the
    default, local tests), `SASL_PLAINTEXT` or `SASL_SSL` (SCRAM-SHA-512 authentication)."""
    return os.environ.get("CTROUTE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()


def kafka_sasl_username() -> str:
    """The principal this process authenticates to Kafka as (`CTROUTE_KAFKA_SASL_USERNAME`),
    e.g. `svc-router` or `partner-hsi`."""
    return os.environ.get("CTROUTE_KAFKA_SASL_USERNAME", "")


def kafka_sasl_password() -> str:
    """That principal's SCRAM password (`CTROUTE_KAFKA_SASL_PASSWORD`)."""
    return os.environ.get("CTROUTE_KAFKA_SASL_PASSWORD", "")


def intake_tls_dir() -> Path | None:
    """Folder with the intake's TLS files (`CTROUTE_INTAKE_TLS_DIR`): the server has
    `server.pem` and `server-key.pem`, clients `ca.pem` (the authority they trust). Unset means
    a plaintext intake that trusts the request's source: local test fixtures only."""
    value = os.environ.get("CTROUTE_INTAKE_TLS_DIR")
    return Path(value) if value else None


def intake_trusted_keys_dir() -> Path:
    """The component systems the intake accepts (`CTROUTE_INTAKE_TRUSTED_KEYS`): one Ed25519
    public key per system, `<system id>.pub`; default `trusted-keys` in the TLS folder."""
    value = os.environ.get("CTROUTE_INTAKE_TRUSTED_KEYS")
    if value:
        return Path(value)
    tls_dir = intake_tls_dir()
    return (tls_dir or Path(".run/secrets/intake")) / "trusted-keys"


def partner_api_tls_dir() -> Path | None:
    """Folder with the partner status API's TLS files (`CTROUTE_PARTNER_API_TLS_DIR`), laid out
    like the intake's. Unset means plaintext, trusting the partner named in a request: local
    test fixtures only."""
    value = os.environ.get("CTROUTE_PARTNER_API_TLS_DIR")
    return Path(value) if value else None


def partner_api_trusted_keys_dir() -> Path:
    """The partners the status API accepts (`CTROUTE_PARTNER_API_TRUSTED_KEYS`): one Ed25519
    public key per partner, `<partner id>.pub`; default `trusted-keys` in its TLS folder."""
    value = os.environ.get("CTROUTE_PARTNER_API_TRUSTED_KEYS")
    if value:
        return Path(value)
    return (partner_api_tls_dir() or Path(".run/secrets/partner-api")) / "trusted-keys"


def partner_signing_key() -> Path | None:
    """A partner's private key (`CTROUTE_PARTNER_KEY`, `<partner id>.key`): `refctl ack` and
    `refctl status` sign their token with it, as that partner."""
    value = os.environ.get("CTROUTE_PARTNER_KEY")
    return Path(value) if value else None


def intake_signing_key() -> Path | None:
    """A component system's private key (`CTROUTE_INTAKE_KEY`, `<system id>.key`): `refctl
    submit` signs its token with it, as that system."""
    value = os.environ.get("CTROUTE_INTAKE_KEY")
    return Path(value) if value else None
