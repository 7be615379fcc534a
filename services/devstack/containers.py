"""The jobs `make run` does itself that need a process of their own under docker compose:
`python -m devstack.containers create-topics` and `... credentials` (one-shot init containers:
the topics; the APIs' TLS certificates and the callers' keys) and
`python -m devstack.containers demo` (feeds the demo referrals and narrates them).

`make run` starts its own broker (devstack.run); these run against the broker and services
named by the usual environment variables, so the compose file can start them as containers.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from devstack.run import say, submit_demo
from devstack.tls import ApiCredentials, ensure_api_credentials
from devstack.watch import follow
from plumbing import config, topics
from plumbing.kafka import security_settings
from referral.domain.policy import default_policy_path, load_policy


def create_topics(bootstrap_servers: str, replication_factor: int, timeout: float) -> int:
    """Create every topic of the policy's partners that does not exist yet."""
    policy = load_policy(config.policy_path() or default_policy_path())
    names = topics.all_topics(list(policy.partners))
    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms, **security_settings()
    )
    try:
        response = admin.create_topics(
            {
                name: {
                    "num_partitions": topics.PARTITIONS,
                    "replication_factor": replication_factor,
                    "configs": topics.configs(name),
                }
                for name in names
            },
            timeout_ms=timeout_ms,
            raise_errors=False,
        )
        created = [t["name"] for t in response["topics"] if t["error_code"] == 0]
        failures = [
            f"{t['name']}: {t['error_message'] or t['error_code']}"
            for t in response["topics"]
            if t["error_code"] not in (0, TopicAlreadyExistsError.errno)
        ]
        if created:
            admin.wait_for_topics(created, timeout_ms=timeout_ms)
    finally:
        admin.close()
    if failures:
        say("creating topics failed: " + "; ".join(failures))
        return 1
    say(f"topics: {len(created)} created, {len(names) - len(created)} already there")
    return 0


def make_credentials(folder: Path, hostnames: list[str]) -> int:
    """The intake's and the partner status API's TLS files and caller keys, in `folder`
    (`intake/`, `partner-api/`), kept when they exist: what `make run` makes in .run/secrets."""
    ensure_api_credentials(folder / "intake", hostnames=tuple(hostnames))
    policy = load_policy(config.policy_path() or default_policy_path())
    ensure_api_credentials(
        folder / "partner-api", tuple(sorted(policy.partners)), hostnames=tuple(hostnames)
    )
    say(f"API credentials ready in {folder} (certificates for {', '.join(hostnames) or '-'})")
    return 0


def run_demo(demo_dir: Path, intake: ApiCredentials) -> int:
    """Feed the demo once, then keep narrating until the container is stopped."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    narrator = follow(config.kafka_bootstrap_servers(), say, stop)
    run_tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    submit_demo(config.grpc_address(), demo_dir, run_tag, narrator, intake)
    say("demo fed; narrating until stopped")
    stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.containers",
        description="Topic creation and the demo feed, as containers of docker compose.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-topics", help="create the topics, then exit")
    create.add_argument("--replication-factor", type=int, default=1)
    create.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    credentials = commands.add_parser(
        "credentials", help="create the APIs' certificates and the callers' keys, then exit"
    )
    credentials.add_argument("--dir", type=Path, required=True, help="where to keep them")
    credentials.add_argument(
        "--hostname", action="append", default=[], help="a name the APIs are reached by"
    )
    demo = commands.add_parser("demo", help="submit the demo referrals and narrate them")
    demo.add_argument("--demo-dir", type=Path, default=Path("deploy/demo"))
    demo.add_argument(
        "--credentials", type=Path, required=True, help="the folder `credentials` filled"
    )
    args = parser.parse_args(argv)
    if args.command == "create-topics":
        try:
            return create_topics(
                config.kafka_bootstrap_servers(), args.replication_factor, args.timeout
            )
        except KafkaError as error:
            say(f"creating topics failed: {type(error).__name__}: {error}")
            return 1
    if args.command == "credentials":
        return make_credentials(args.dir, args.hostname)
    return run_demo(args.demo_dir, ApiCredentials(args.credentials / "intake"))


if __name__ == "__main__":
    sys.exit(main())
