"""`refctl audit verify`: prove the audit chain intact, or name where it was tampered with."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from plumbing import config
from referral.adapters.audit_log import AuditLog
from referral.domain.audit_chain import verify


def cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.log)
    if not path.exists():
        print(f"refctl: no audit log at {path} (set CTROUTE_AUDIT_LOG or pass --log)")
        return 1
    log = AuditLog(path)
    try:
        entries = list(log.entries())
    finally:
        log.close()
    verdict = verify(entries)
    if verdict.intact:
        head = entries[-1].hash if entries else "(empty)"
        print(f"audit chain intact: {verdict.entries} entries, head {head}")
        return 0
    print(f"audit chain BROKEN at entry {verdict.at_seq}: {verdict.problem}")
    return 2


def register(commands: Any) -> None:
    """Add `audit verify` to refctl."""
    audit = commands.add_parser("audit", help="the tamper-evident record of releases and status")
    verbs = audit.add_subparsers(dest="audit_command", required=True, metavar="VERB")
    check = verbs.add_parser("verify", help="check the hash chain end to end")
    check.add_argument(
        "--log", default=str(config.audit_log_path()), help="audit log file (SQLite)"
    )
    check.set_defaults(run=cmd_verify)
