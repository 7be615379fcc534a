"""`refctl partner add|list|rotate|remove`: provision the partners that may connect to Kafka.

`add` is everything a new partner needs in one command: its principal `partner-<id>` with a
SCRAM-SHA-512 credential, its inbox and status topics, its ACLs (read its inbox with its own
consumer groups, write its status topic), and the services' ACLs on those two topics; then it
prints the connection settings to hand to the partner. The grants come from `plumbing.access`.

Run it as an operator principal allowed to alter the cluster (`svc-refctl`): set
`CTROUTE_KAFKA_SECURITY_PROTOCOL`, `CTROUTE_KAFKA_SASL_USERNAME` and `_PASSWORD`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from plumbing import access, config, kafka_access, topics
from plumbing.kafka import SASL_MECHANISM, security_settings
from refctl.output import fail


class _Refused(Exception):
    """A partner command cannot go on; the message says why and what to do."""


@contextmanager
def _admin(args: argparse.Namespace) -> Iterator[Any]:
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=args.bootstrap_servers,
            client_id="refctl",
            request_timeout_ms=int(args.timeout * 1000),
            bootstrap_timeout_ms=int(args.timeout * 1000),
            **security_settings(),
        )
    except KafkaError as error:
        raise _Refused(
            f"cannot connect to Kafka at {args.bootstrap_servers} ({type(error).__name__}): is "
            "it running, and are CTROUTE_KAFKA_SASL_USERNAME/_PASSWORD an operator's "
            "(svc-refctl) credentials?"
        ) from error
    try:
        yield admin
    finally:
        admin.close()


def _exists(admin: Any, partner: str) -> bool:
    return access.partner_principal(partner) in kafka_access.principals(admin)


def _create_topics(admin: Any, partner: str) -> list[str]:
    names = [topics.inbox(partner), topics.status(partner)]
    request = {
        name: {"num_partitions": topics.PARTITIONS, "replication_factor": 1, "configs": {}}
        for name in names
    }
    response = admin.create_topics(request, raise_errors=False)
    created = []
    for topic in response["topics"]:
        if topic["error_code"] == 0:
            created.append(topic["name"])
        elif topic["error_code"] != TopicAlreadyExistsError.errno:
            raise _Refused(f"creating {topic['name']} failed: {topic['error_message']}")
    return created


def _settings(args: argparse.Namespace, partner: str, password: str) -> list[str]:
    return [
        f"KAFKA_BOOTSTRAP_SERVERS={args.bootstrap_servers}",
        f"CTROUTE_KAFKA_SECURITY_PROTOCOL={config.kafka_security_protocol()}",
        f"CTROUTE_KAFKA_SASL_USERNAME={access.partner_principal(partner)}",
        f"CTROUTE_KAFKA_SASL_PASSWORD={password}",
        f"CTROUTE_PARTNER_ID={partner}",
    ]


def _hand_over(args: argparse.Namespace, partner: str, password: str) -> None:
    """Print the connection settings, or write them to a file only this user can read."""
    lines = _settings(args, partner, password)
    if args.env_file is None:
        print("connection settings (give them to the partner over a secure channel):")
        print("\n".join(f"  {line}" for line in lines))
    else:
        path = Path(args.env_file)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        print(f"connection settings written to {path} (mode 0600)")
    print(
        f"  consumer groups: {access.partner_group_prefix(partner)}<name>; "
        f"reads {topics.inbox(partner)}, reports on {topics.status(partner)}"
    )


def cmd_add(args: argparse.Namespace) -> int:
    partner = args.partner
    with _admin(args) as admin:
        if _exists(admin, partner):
            raise _Refused(
                f"partner {partner} already exists: `refctl partner rotate {partner}` gives it "
                "new credentials"
            )
        created = _create_topics(admin, partner)
        password = kafka_access.new_password()
        kafka_access.set_password(admin, access.partner_principal(partner), password)
        granted = 0
        for principal, grants in access.partner_topic_grants(partner).items():
            granted += kafka_access.grant(admin, principal, grants)
    print(
        f"partner {partner} added: principal {access.partner_principal(partner)} "
        f"({SASL_MECHANISM}), "
        f"{len(created)} topic(s) created, {granted} ACLs"
    )
    _hand_over(args, partner, password)
    print(f"  it receives referrals once the routing policy names {partner} as a recipient")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    partner = args.partner
    with _admin(args) as admin:
        if not _exists(admin, partner):
            raise _Refused(f"no partner {partner}: add it with `refctl partner add {partner}`")
        password = kafka_access.new_password()
        kafka_access.set_password(admin, access.partner_principal(partner), password)
    print(f"partner {partner}: new credentials; the old password no longer authenticates")
    _hand_over(args, partner, password)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    partner = args.partner
    principal = access.partner_principal(partner)
    with _admin(args) as admin:
        if not _exists(admin, partner):
            raise _Refused(f"no partner {partner} (see `refctl partner list`)")
        kafka_access.delete_password(admin, principal)
        revoked = kafka_access.revoke_all(admin, principal)
        for service, grants in access.partner_topic_grants(partner).items():
            if service != principal:
                revoked += kafka_access.revoke_on(admin, service, grants)
        if args.delete_topics:
            admin.delete_topics([topics.inbox(partner), topics.status(partner)])
    kept = "deleted" if args.delete_topics else "kept (--delete-topics removes them)"
    print(f"partner {partner} removed: credential deleted, {revoked} ACLs revoked, topics {kept}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        names = [p for p in kafka_access.principals(admin) if access.partner_of_principal(p)]
        rows = [(name, kafka_access.grants_of(admin, name)) for name in names]
    if not rows:
        print("no partners with credentials yet: `refctl partner add NAME` adds one")
        return 0
    for name, grants in rows:
        print(f"{access.partner_of_principal(name):<20} {name:<28} {'; '.join(grants)}")
    return 0


def _partner_id(text: str) -> str:
    try:
        topics.inbox(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _run(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = command(args)
        except _Refused as refused:
            return fail(str(refused))
        except (KafkaError, kafka_access.AccessError) as error:
            return fail(
                f"the broker refused ({type(error).__name__}): {error}\n"
                "  partner commands need an operator principal (svc-refctl) in "
                "CTROUTE_KAFKA_SASL_USERNAME/_PASSWORD"
            )
        return result

    return run


def register(commands: Any) -> None:
    partner = commands.add_parser(
        "partner", help="add, list, rotate or remove a partner's Kafka credentials and ACLs"
    )
    actions = partner.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bootstrap-servers", default=config.kafka_bootstrap_servers())
        parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait")

    def hand_over(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--env-file", default=None, help="write the settings to this file (0600), not stdout"
        )

    add = actions.add_parser("add", help="principal, credentials, topics and ACLs in one step")
    add.add_argument("partner", type=_partner_id, help="partner id, e.g. ngo-gulf-coast")
    common(add)
    hand_over(add)
    add.set_defaults(run=_run(cmd_add))

    listing = actions.add_parser("list", help="partners with credentials, and their ACLs")
    common(listing)
    listing.set_defaults(run=_run(cmd_list))

    rotate = actions.add_parser("rotate", help="new credentials; the old ones stop working")
    rotate.add_argument("partner", type=_partner_id)
    common(rotate)
    hand_over(rotate)
    rotate.set_defaults(run=_run(cmd_rotate))

    remove = actions.add_parser("remove", help="revoke the partner's credentials and ACLs")
    remove.add_argument("partner", type=_partner_id)
    remove.add_argument(
        "--delete-topics", action="store_true", help="also delete its inbox and status topics"
    )
    common(remove)
    remove.set_defaults(run=_run(cmd_remove))
