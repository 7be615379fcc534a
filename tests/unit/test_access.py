"""The access table: the naming scheme deployments rely on, and desks matching the services."""

from __future__ import annotations

import pytest

from enforcement.domain.work_items import PARTNERS as ENFORCEMENT_PARTNERS
from plumbing import access, topics
from plumbing.access import Operation, Pattern, Resource
from referral.domain.policy import default_policy_path, load_policy
from victim_services.domain.cases import INBOX_PARTNERS


def test_partner_grants_follow_the_published_naming_scheme() -> None:
    grants = set(access.partner_grants("ngo-gulf"))

    assert access.partner_principal("ngo-gulf") == "partner-ngo-gulf"
    assert grants == {
        access.Grant(
            Resource.TOPIC,
            "partner.ngo-gulf.inbox",
            Pattern.LITERAL,
            (Operation.READ, Operation.DESCRIBE),
        ),
        access.Grant(
            Resource.TOPIC,
            "partner.ngo-gulf.status",
            Pattern.LITERAL,
            (Operation.WRITE, Operation.DESCRIBE),
        ),
        access.Grant(Resource.GROUP, "partner.ngo-gulf.", Pattern.PREFIXED, (Operation.READ,)),
    }


@pytest.mark.parametrize("partner", sorted(load_policy(default_policy_path()).partners))
def test_each_policy_partner_is_worked_by_the_service_that_consumes_its_inbox(
    partner: str,
) -> None:
    expected = (
        "svc-enforcement"
        if partner in ENFORCEMENT_PARTNERS
        else "svc-victim-services"
        if INBOX_PARTNERS.match(partner)
        else None
    )

    assert access.desk_principal(partner) == expected


def test_no_service_but_the_router_and_tracker_writes_an_inbox_and_none_reads_every_topic() -> None:
    grants = access.system_grants(sorted(load_policy(default_policy_path()).partners))

    for principal, held in grants.items():
        for grant in held:
            if grant.resource is Resource.TOPIC and grant.name.endswith(".inbox"):
                assert Operation.WRITE not in grant.operations or principal in {
                    "svc-router",
                    "svc-tracker",
                    "svc-refctl",
                }
            if principal != "svc-refctl" and grant.resource is not Resource.TRANSACTIONAL_ID:
                # Prefixes only for operators, and for the router's own transactional ids
                # (one per instance: `referral-router-<instance id>`).
                assert grant.pattern is Pattern.LITERAL
    assert {g.name for g in grants["svc-intake"]} == {topics.SUBMITTED}


def test_the_router_may_use_only_its_own_transactional_ids() -> None:
    (grant,) = [
        g for g in access.SERVICE_GRANTS["svc-router"] if g.resource is Resource.TRANSACTIONAL_ID
    ]
    assert (grant.name, grant.pattern) == ("referral-router-", Pattern.PREFIXED)
    assert set(grant.operations) == {Operation.WRITE, Operation.DESCRIBE}
    others = [
        principal
        for principal, held in access.SERVICE_GRANTS.items()
        if principal != "svc-router" and any(g.resource is Resource.TRANSACTIONAL_ID for g in held)
    ]
    assert others == []
