"""The services' notion of now, which tests can move forward without sleeping.

`CTROUTE_CLOCK_OFFSET_FILE` names a file holding a number of seconds to add to the real time.
A test writes 3600 into it and every service reading this clock lives an hour later: deadline
logic runs in the real processes against a controlled clock. Unset in production.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path


def offset_seconds() -> float:
    """The configured offset, 0 when none is set or the file is unreadable or malformed."""
    path = os.environ.get("CTROUTE_CLOCK_OFFSET_FILE")
    if not path:
        return 0.0
    try:
        return float(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def now() -> datetime:
    """The current UTC time, moved by the test offset if one is configured."""
    return datetime.now(UTC) + timedelta(seconds=offset_seconds())
