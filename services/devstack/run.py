"""`make run`: the whole system on this machine, with a demo feed narrated as it happens.

Starts (or restarts, keeping its data) a local Kafka broker, creates the topics, starts every
service as its own process, submits the demo referrals under deploy/demo, and prints each
referral's fan-out and each partner's acknowledgement. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import json_format

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from devstack.broker import BrokerError, EmbeddedKafka, PrerequisiteMissing, find_project_root
from devstack.stack import ServiceFailed, ServiceStack
from devstack.watch import ReferralNarrator, follow
from plumbing import config, topics
from referral.domain.policy import default_policy_path, load_policy


def say(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {message}", flush=True)


def submit_demo(address: str, demo_dir: Path, run_tag: str, narrator: ReferralNarrator) -> None:
    """Submit each demo referral once per run (the run tag keeps source references unique),
    waiting for each to be acknowledged by all its partners so the story reads in order."""
    with grpc.insecure_channel(address) as channel:
        stub = intake_pb2_grpc.ReferralIntakeServiceStub(channel)
        for path in sorted(demo_dir.glob("*.json")):
            request = json_format.Parse(path.read_text(), intake_pb2.SubmitReferralRequest())
            request.referral.source_reference += f"-{run_tag}"
            response = stub.SubmitReferral(request, timeout=15)
            say(f"submitted {response.referral_id} ({path.name})")
            if not narrator.wait_until_acknowledged(response.referral_id, timeout=30):
                say(
                    f"{response.referral_id} was not acknowledged by every partner within 30 s;"
                    " see the logs in .run/logs"
                )


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
        run_dir / "kafka", port, controller_port, project_root=root, progress=say
    )
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
    )
    try:
        broker.start()
        created = broker.create_topics(
            [(name, topics.PARTITIONS) for name in topics.all_topics(list(policy.partners))]
        )
        say(
            f"topics: {len(created)} created, policy {policy.version} with "
            f"{len(policy.partners)} partners"
        )
        stack.start()
        narrator = follow(broker.bootstrap_servers, say, stop)
        say(f"intake on {grpc_address}; feeding the demo referrals from deploy/demo")
        run_tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        submit_demo(grpc_address, root / "deploy" / "demo", run_tag, narrator)
        say(
            "demo fed. The system keeps running: try `refctl submit deploy/demo/"
            "03-forced-labor-goods.json` or `refctl tail hsi` in another terminal "
            "(activate with `. .venv/bin/activate`). Ctrl-C stops everything."
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
