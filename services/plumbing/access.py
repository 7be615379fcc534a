"""Who may do what on the broker: every principal and its ACLs, in one table.

The broker setup (`make run`, the security tests), `refctl partner add` and the deployment's
user manifests all read this module, so the naming scheme and the grants cannot drift apart:

* services authenticate as ``svc-<service>``, each with only the topics and consumer groups its
  code uses (least privilege);
* a partner authenticates as ``partner-<partner id>`` and may read only its own inbox, with
  consumer groups named ``partner.<partner id>.*``, and write only its own status topic;
* the bootstrap principal ``admin`` is the broker's super user and is used for nothing else.

Topics of one partner are granted to the services that handle them when the partner is added
(:func:`partner_topic_grants`), so no service holds a wildcard over every partner's topics.

Pure data: the Kafka adapter that applies these grants is `plumbing.kafka_access`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from plumbing import topics

ADMIN_PRINCIPAL = "admin"
"""The broker's super user: creates the other principals and their ACLs, nothing else."""

PARTNER_PRINCIPAL_PREFIX = "partner-"
SERVICE_PRINCIPAL_PREFIX = "svc-"


class Resource(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"
    TRANSACTIONAL_ID = "transactional_id"


class Pattern(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    DESCRIBE = "describe"


CLUSTER_NAME = "kafka-cluster"
"""Kafka's name for the one cluster resource."""


@dataclass(frozen=True, order=True)
class Grant:
    """One allow rule: `operations` on the resources `name` designates under `pattern`."""

    resource: Resource
    name: str
    pattern: Pattern
    operations: tuple[Operation, ...]

    def __str__(self) -> str:
        star = "*" if self.pattern is Pattern.PREFIXED else ""
        verbs = ",".join(op.value for op in self.operations)
        return f"{verbs} {self.resource.value} {self.name}{star}"


def _topic(name: str, *operations: Operation) -> Grant:
    return Grant(Resource.TOPIC, name, Pattern.LITERAL, (*operations, Operation.DESCRIBE))


def _group(name: str, pattern: Pattern = Pattern.LITERAL) -> Grant:
    return Grant(Resource.GROUP, name, pattern, (Operation.READ,))


R, W = Operation.READ, Operation.WRITE

SERVICE_GRANTS: dict[str, tuple[Grant, ...]] = {
    "svc-intake": (_topic(topics.SUBMITTED, W),),
    "svc-router": (
        _group("referral-router"),
        # Each batch is one Kafka transaction, under the id `referral-router-<instance id>`.
        Grant(
            Resource.TRANSACTIONAL_ID,
            "referral-router-",
            Pattern.PREFIXED,
            (W, Operation.DESCRIBE),
        ),
        _topic(topics.SUBMITTED, R),
        _topic(topics.LIFECYCLE, W),
        _topic(topics.DEAD_LETTER, W),
        *(_topic(name, R, W) for name in topics.ROUTER_STATE),
    ),
    "svc-tracker": (
        _group("referral-tracker"),
        _topic(topics.LIFECYCLE, R, W),
        _topic(topics.SUBMITTED, W),
        _topic(topics.DEAD_LETTER, W),
    ),
    "svc-timeline": (
        _group("referral-timeline"),
        _topic(topics.LIFECYCLE, R),
        _topic(topics.SUBMITTED, R),
        _topic(topics.DEAD_LETTER, W),
    ),
    "svc-enforcement": (_group("enforcement"), _topic(topics.DEAD_LETTER, W)),
    "svc-victim-services": (
        _group("victim-services"),
        _topic(topics.SUBMITTED, W),
        _topic(topics.DEAD_LETTER, W),
    ),
    # Operators: provision partners (topics, credentials, ACLs), read every topic, redrive
    # dead letters to where they came from. Not a super user: it cannot act as the broker.
    "svc-refctl": (
        Grant(
            Resource.CLUSTER,
            CLUSTER_NAME,
            Pattern.LITERAL,
            (Operation.CREATE, Operation.ALTER, Operation.DESCRIBE),
        ),
        *(
            Grant(
                Resource.TOPIC,
                prefix,
                Pattern.PREFIXED,
                (R, W, Operation.CREATE, Operation.DELETE, Operation.DESCRIBE),
            )
            for prefix in ("referrals.", "partner.")
        ),
    ),
}
"""Each service principal's own grants; partner topics come from :func:`partner_topic_grants`."""

SERVICE_OF_PRINCIPAL: dict[str, str] = {
    "svc-intake": "referral-intake",
    "svc-router": "referral-router",
    "svc-tracker": "referral-tracker",
    "svc-timeline": "referral-timeline",
    "svc-enforcement": "enforcement",
    "svc-victim-services": "victim-services",
}
"""Which process (as `devstack.stack` names them) authenticates as which service principal."""

_ENFORCEMENT_DESKS = frozenset({"hsi", "cbp", "uscg", "ccht"})
_VICTIM_SERVICES_DESKS = re.compile(r"^(hsi-vap|uscis|ngo-[a-z][a-z0-9-]*)$")


def desk_principal(partner: str) -> str | None:
    """The service that works a partner's inbox on its behalf in this system, if any.

    Mirrors `enforcement.domain.work_items.PARTNERS` and `victim_services.domain.cases`
    (a unit test keeps them equal). Other partners run their own consumer (the partner SDK).
    """
    if partner in _ENFORCEMENT_DESKS:
        return "svc-enforcement"
    if _VICTIM_SERVICES_DESKS.match(partner):
        return "svc-victim-services"
    return None


def partner_principal(partner: str) -> str:
    """``partner-<id>``: the principal a partner authenticates as."""
    topics.inbox(partner)  # validates the id
    return f"{PARTNER_PRINCIPAL_PREFIX}{partner}"


def partner_of_principal(principal: str) -> str | None:
    """The partner id of a ``partner-<id>`` principal, or None for any other principal."""
    if not principal.startswith(PARTNER_PRINCIPAL_PREFIX):
        return None
    return principal.removeprefix(PARTNER_PRINCIPAL_PREFIX)


def partner_group_prefix(partner: str) -> str:
    """Consumer groups a partner may use start with this (``partner.<id>.``)."""
    return f"partner.{partner}."


def partner_grants(partner: str) -> tuple[Grant, ...]:
    """The partner's own principal: read its inbox, write its status, its own groups."""
    return (
        _topic(topics.inbox(partner), R),
        _topic(topics.status(partner), W),
        _group(partner_group_prefix(partner), Pattern.PREFIXED),
    )


def partner_topic_grants(partner: str) -> dict[str, tuple[Grant, ...]]:
    """What every principal needs on one partner's topics, by principal (partner included).

    The router delivers to the inbox; the tracker reads the status topic and writes reminders
    to the inbox; the timeline reads the status topic; the desk service, if the partner has
    one here, reads the inbox and reports on the status topic.
    """
    inbox, status = topics.inbox(partner), topics.status(partner)
    grants: dict[str, tuple[Grant, ...]] = {
        partner_principal(partner): partner_grants(partner),
        "svc-router": (_topic(inbox, W),),
        "svc-tracker": (_topic(inbox, W), _topic(status, R)),
        "svc-timeline": (_topic(status, R),),
    }
    desk = desk_principal(partner)
    if desk is not None:
        grants[desk] = (_topic(inbox, R), _topic(status, W))
    return grants


def system_grants(partners: list[str]) -> dict[str, tuple[Grant, ...]]:
    """Every service principal's grants for a system serving `partners` (desks only: the
    partner principals themselves are added with `refctl partner add`)."""
    merged: dict[str, list[Grant]] = {name: list(g) for name, g in SERVICE_GRANTS.items()}
    for partner in sorted(partners):
        for principal, grants in partner_topic_grants(partner).items():
            if principal.startswith(SERVICE_PRINCIPAL_PREFIX):
                merged[principal].extend(grants)
    return {name: tuple(grants) for name, grants in merged.items()}
