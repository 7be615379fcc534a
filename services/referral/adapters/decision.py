"""Translates the policy engine's decision into the contract's RoutingDecision and deliveries."""

from __future__ import annotations

from datetime import datetime

from ctroute.options.v1 import sensitivity_pb2
from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from plumbing.sensitivity import class_value, redact
from referral.domain.correlation import PartnerCorroboration
from referral.domain.routing import PartnerRelease, RoutingDecision


def priority_value(name: str) -> lifecycle_pb2.Priority.ValueType:
    return lifecycle_pb2.Priority.Value(f"PRIORITY_{name}")


def decision_to_proto(
    decision: RoutingDecision, delivery_ids: dict[str, str], decided_at: datetime
) -> lifecycle_pb2.RoutingDecision:
    """The auditor's view of a decision: rules, policy version, per-partner release."""
    proto = lifecycle_pb2.RoutingDecision(
        policy_version=decision.policy_version,
        priority=priority_value(decision.priority.name),
        matched_rules=[
            lifecycle_pb2.RuleMatch(rule_id=m.rule_id, reason=m.reason)
            for m in decision.matched_rules
        ],
    )
    proto.decided_at.FromDatetime(decided_at)
    for release in decision.partners:
        proto.partners.append(
            lifecycle_pb2.PartnerRelease(
                partner=release.partner,
                priority=priority_value(release.priority.name),
                rule_ids=list(release.rule_ids),
                released_classes=released_class_values(release),
                victim_identities=[
                    lifecycle_pb2.VictimRelease(
                        victim_ref=v.victim_ref,
                        basis=lifecycle_pb2.ReleaseBasis.Value(f"RELEASE_BASIS_{v.basis.name}"),
                    )
                    for v in release.victim_identities
                ],
                withheld_victim_refs=list(release.withheld_victim_refs),
                delivery_id=delivery_ids[release.partner],
            )
        )
    return proto


def released_class_values(release: PartnerRelease) -> list[sensitivity_pb2.Sensitivity.ValueType]:
    """The class enum values a partner's copy may contain, in enum order."""
    values = {
        sensitivity_pb2.Sensitivity.ValueType(class_value(c.name)) for c in release.released_classes
    }
    if release.victim_identities:
        values.add(sensitivity_pb2.SENSITIVITY_VICTIM_IDENTITY)
    return sorted(values)


def partner_copy(referral: referral_pb2.Referral, release: PartnerRelease) -> referral_pb2.Referral:
    """The referral as this partner may see it: withheld classes and victims' identities absent."""
    released_refs = {v.victim_ref for v in release.victim_identities}
    classes = {class_value(c.name) for c in release.released_classes}
    copy = redact(
        referral,
        classes,
        victim_identity_released=lambda victim: victim.victim_ref in released_refs,  # type: ignore[attr-defined]
    )
    assert isinstance(copy, referral_pb2.Referral)
    return copy


def delivery_message(
    *,
    delivery_id: str,
    release: PartnerRelease,
    referral: referral_pb2.Referral,
    policy_version: str,
    delivered_at: datetime,
    acknowledge_by: datetime,
    kind: delivery_pb2.DeliveryKind.ValueType,
    corroboration: PartnerCorroboration,
) -> delivery_pb2.PartnerDelivery:
    delivery = delivery_pb2.PartnerDelivery(
        delivery_id=delivery_id,
        partner=release.partner,
        priority=priority_value(release.priority.name),
        rule_ids=list(release.rule_ids),
        released_classes=released_class_values(release),
        policy_version=policy_version,
        kind=kind,
    )
    delivery.referral.CopyFrom(partner_copy(referral, release))
    delivery.delivered_at.FromDatetime(delivered_at)
    delivery.acknowledge_by.FromDatetime(acknowledge_by)
    delivery.corroboration.corroborating_referrals = corroboration.corroborating_referrals
    delivery.corroboration.referral_ids_you_received.extend(corroboration.referral_ids_you_received)
    return delivery
