"""Applies `plumbing.access` to a broker: SCRAM credentials and ACLs, through the admin API.

Used by the local broker setup, `refctl partner` and the security tests. Every function takes
an open `KafkaAdminClient` whose principal may alter the cluster (the broker's super user, or
`svc-refctl`). Passwords are never logged or put in error messages.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from plumbing.access import Grant, Pattern, Resource

SCRAM_MECHANISM = "SCRAM-SHA-512"
_MECHANISM = ScramMechanism.SCRAM_SHA_512
_ITERATIONS = 8192

_RESOURCE = {
    Resource.TOPIC: ResourceType.TOPIC,
    Resource.GROUP: ResourceType.GROUP,
    Resource.CLUSTER: ResourceType.CLUSTER,
    Resource.TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
}
_PATTERN = {
    Pattern.LITERAL: ACLResourcePatternType.LITERAL,
    Pattern.PREFIXED: ACLResourcePatternType.PREFIXED,
}


class AccessError(RuntimeError):
    """The broker refused a credential or ACL change; the message names the principal."""


def new_password() -> str:
    """A random password for a new principal (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def set_password(admin: Any, principal: str, password: str) -> None:
    """Create or replace the principal's SCRAM-SHA-512 credential (the old one stops working)."""
    upsert = UserScramCredentialUpsertion(principal, _MECHANISM, password, iterations=_ITERATIONS)
    errors = admin.alter_user_scram_credentials([upsert])
    if errors.get(principal):
        raise AccessError(f"setting the credential of {principal} failed: {errors[principal]}")


def delete_password(admin: Any, principal: str) -> bool:
    """Delete the principal's credential; False if it had none."""
    errors = admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(principal, _MECHANISM)]
    )
    error = errors.get(principal)
    if error and any(words in error.lower() for words in ("not found", "does not exist")):
        return False
    if error:
        raise AccessError(f"deleting the credential of {principal} failed: {error}")
    return True


def principals(admin: Any) -> list[str]:
    """Every principal that has a SCRAM credential, sorted."""
    described: dict[str, Any] = admin.describe_user_scram_credentials()
    return sorted(name for name, info in described.items() if not info.get("error"))


def _acls(principal: str, grants: Iterable[Grant]) -> list[Any]:
    return [
        ACL(
            principal=f"User:{principal}",
            host="*",
            operation=ACLOperation[operation.name],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                _RESOURCE[grant.resource], grant.name, _PATTERN[grant.pattern]
            ),
        )
        for grant in grants
        for operation in grant.operations
    ]


def grant(admin: Any, principal: str, grants: Iterable[Grant]) -> int:
    """Add the grants as ALLOW ACLs for the principal (adding an existing one is a no-op)."""
    acls = _acls(principal, grants)
    if not acls:
        return 0
    result = admin.create_acls(acls)
    if result["failed"]:
        raise AccessError(f"creating ACLs for {principal} failed: {result['failed'][0]!r}")
    return len(acls)


def _filter(principal: str | None, pattern: Any) -> Any:
    return ACLFilter(
        principal=f"User:{principal}" if principal is not None else None,
        host=None,
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=pattern,
    )


def revoke_all(admin: Any, principal: str) -> int:
    """Delete every ACL naming the principal; returns how many were deleted."""
    any_resource = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
    return _delete(admin, _filter(principal, any_resource), principal)


def revoke_on(admin: Any, principal: str, grants: Iterable[Grant]) -> int:
    """Delete the principal's ACLs on the grants' resources (any operation)."""
    deleted = 0
    for item in grants:
        pattern = ResourcePatternFilter(_RESOURCE[item.resource], item.name, _PATTERN[item.pattern])
        deleted += _delete(admin, _filter(principal, pattern), principal)
    return deleted


def _delete(admin: Any, acl_filter: Any, principal: str) -> int:
    deleted = 0
    for _filter_used, matching, error in admin.delete_acls([acl_filter]):
        if error is not None and getattr(error, "errno", 0) != 0:
            raise AccessError(f"deleting ACLs of {principal} failed: {error.__name__}")
        deleted += len(matching)
    return deleted


def grants_of(admin: Any, principal: str) -> list[str]:
    """The principal's ACLs, one readable line each (`read topic partner.hsi.inbox`)."""
    any_resource = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
    acls, error = admin.describe_acls(_filter(principal, any_resource))
    if error is not None and getattr(error, "errno", 0) != 0:
        raise AccessError(f"listing ACLs of {principal} failed: {error.__name__}")
    lines = []
    for acl in acls:
        pattern = acl.resource_pattern
        star = "*" if pattern.pattern_type == ACLResourcePatternType.PREFIXED else ""
        lines.append(
            f"{acl.operation.name.lower()} {pattern.resource_type.name.lower()} "
            f"{pattern.resource_name}{star}"
        )
    return sorted(lines)
