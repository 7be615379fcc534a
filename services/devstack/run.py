"""`make run`: the whole system on this machine, with a demo feed narrated as it happens.

Starts (or restarts, keeping its data) a local Kafka broker with SASL/SCRAM and deny-by-default
ACLs, creates the topics, gives every service its own principal and ACLs (`plumbing.access`),
generates the intake's TLS certificate and the component systems' keys if missing, starts every
service as its own process, submits the demo referrals under deploy/demo (each signed as its
source), and prints each referral's fan-out and each partner's acknowledgement. Credentials live
in `.run/secrets` (mode 0600). Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import json_format
from kafka import KafkaAdminClient

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from devstack.broker import BrokerError, EmbeddedKafka, PrerequisiteMissing, find_project_root
from devstack.credentials import (
    Credential,
    provision_services,
    service_password,
    write_env_file,
)
from devstack.stack import ServiceFailed, ServiceStack
from devstack.tls import COMPONENT_SYSTEMS, ApiCredentials, ensure_api_credentials
from devstack.watch import ReferralNarrator, follow
from plumbing import access, config, topics
from plumbing.grpc_auth import authenticated_channel
from referral.domain.policy import default_policy_path, load_policy


def say(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {message}", flush=True)


def submit_demo(
    address: str,
    demo_dir: Path,
    run_tag: str,
    narrator: ReferralNarrator,
    intake: ApiCredentials,
) -> None:
    """Submit each demo referral once per run (the run tag keeps source references unique),
    as its source system, waiting for each to be acknowledged by all its partners so the story
    reads in order."""
    for path in sorted(demo_dir.glob("*.json")):
        request = json_format.Parse(path.read_text(), intake_pb2.SubmitReferralRequest())
        request.referral.source_reference += f"-{run_tag}"
        token = intake.token(request.referral.source)
        with authenticated_channel(address, intake.ca_pem, token) as channel:
            stub = intake_pb2_grpc.ReferralIntakeServiceStub(channel)
            response = stub.SubmitReferral(request, timeout=15)
        say(f"submitted {response.referral_id} ({path.name})")
        if not narrator.wait_until_acknowledged(response.referral_id, timeout=30):
            say(
                f"{response.referral_id} was not acknowledged by every partner within 30 s;"
                " see the logs in .run/logs"
            )


def _service_credentials(folder: Path) -> dict[str, Credential]:
    """Every service principal's credential (its password created now if it has none yet)."""
    return {
        principal: Credential(principal, service_password(folder, principal))
        for principal in access.SERVICE_GRANTS
    }


def _service_env(
    credentials: dict[str, Credential], intake: ApiCredentials, partner_api: ApiCredentials
) -> dict[str, dict[str, str]]:
    """Each service authenticates to Kafka as its own principal; the intake and the tracker's
    partner status API also serve TLS and check their callers' tokens."""
    env = {
        service: credentials[principal].env()
        for principal, service in access.SERVICE_OF_PRINCIPAL.items()
    }
    env["referral-intake"].update(
        CTROUTE_INTAKE_TLS_DIR=str(intake.folder),
        CTROUTE_INTAKE_TRUSTED_KEYS=str(intake.trusted_keys),
    )
    env["referral-tracker"].update(
        CTROUTE_PARTNER_API_TLS_DIR=str(partner_api.folder),
        CTROUTE_PARTNER_API_TRUSTED_KEYS=str(partner_api.trusted_keys),
    )
    return env


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    root = find_project_root()
    run_dir = root / ".run"
    port = int(os.environ.get("KAFKA_PORT", "9092"))
    controller_port = int(os.environ.get("KAFKA_CONTROLLER_PORT", str(port + 1)))
    grpc_address = config.grpc_address()
    policy = load_policy(config.policy_path() or default_policy_path())
    stop = threading.Event()
    # Installed explicitly: a shell may start `make run` with SIGINT ignored (background jobs).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    broker = EmbeddedKafka(
        run_dir / "kafka", port, controller_port, project_root=root, sasl=True, progress=say
    )
    secrets = run_dir / "secrets"
    demo_sources = tuple(
        json_format.Parse(path.read_text(), intake_pb2.SubmitReferralRequest()).referral.source
        for path in sorted((root / "deploy" / "demo").glob("*.json"))
    )
    intake = ensure_api_credentials(
        secrets / "intake", tuple(sorted({*COMPONENT_SYSTEMS, *demo_sources}))
    )
    partner_api = ensure_api_credentials(secrets / "partner-api", tuple(sorted(policy.partners)))
    credentials = _service_credentials(secrets / "kafka")
    stack = ServiceStack(
        bootstrap_servers=broker.bootstrap_servers,
        grpc_address=grpc_address,
        partner_grpc_address=config.partner_grpc_address(),
        query_grpc_address=config.query_grpc_address(),
        victim_services_grpc_address=config.victim_services_grpc_address(),
        data_dir=run_dir / "data",
        trace_dir=run_dir / "traces",
        log_dir=run_dir / "logs",
        progress=say,
        service_env=_service_env(credentials, intake, partner_api),
        # Readiness checks describe the services' consumer groups: the broker's admin does.
        admin_settings={
            key: value
            for key, value in broker.client_config().items()
            if key != "bootstrap_servers"
        },
        intake_ca=intake.ca_pem,
    )
    try:
        broker.start()
        created = broker.create_topics(
            [(name, topics.PARTITIONS) for name in topics.all_topics(list(policy.partners))]
        )
        admin = KafkaAdminClient(**broker.client_config())
        try:
            provision_services(admin, list(policy.partners), secrets / "kafka")
        finally:
            admin.close()
        operator_env = secrets / "kafka" / "svc-refctl.env"
        write_env_file(operator_env, broker.bootstrap_servers, credentials["svc-refctl"])
        say(
            f"topics: {len(created)} created, policy {policy.version} with "
            f"{len(policy.partners)} partners; SASL/SCRAM and ACLs on, one principal per service"
        )
        stack.start()
        # The narrator reads every topic, as an operator.
        os.environ.update(credentials["svc-refctl"].env())
        narrator = follow(broker.bootstrap_servers, say, stop)
        say(f"intake on {grpc_address} (TLS, signed tokens); feeding the demo from deploy/demo")
        run_tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        submit_demo(grpc_address, root / "deploy" / "demo", run_tag, narrator, intake)
        say(
            "demo fed. The system keeps running: README.md (Security) shows refctl against it, "
            "with the credentials in .run/secrets. Ctrl-C stops everything."
        )
        while not stop.is_set():
            for name, service in stack.running.items():
                if service.process.poll() is not None:
                    raise ServiceFailed(f"{name} exited unexpectedly; see {service.log_path}")
            stop.wait(1)
    except KeyboardInterrupt:
        say("stopping (Ctrl-C)")
    except (PrerequisiteMissing, BrokerError, ServiceFailed) as error:
        print(f"make run: {error}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
