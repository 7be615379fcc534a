"""Loads every generated contract module, so its messages can be found by their full names."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def load() -> tuple[ModuleType, ...]:
    """Import the generated modules once; returns them for callers that walk descriptors."""
    from ctroute.operations.v1 import dead_letter_pb2
    from ctroute.options.v1 import sensitivity_pb2
    from ctroute.partner.v1 import delivery_pb2
    from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, query_pb2, referral_pb2

    return (
        sensitivity_pb2,
        referral_pb2,
        lifecycle_pb2,
        intake_pb2,
        query_pb2,
        delivery_pb2,
        dead_letter_pb2,
    )
