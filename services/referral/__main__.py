"""`python -m referral intake|router|tracker|timeline`: the gRPC intake, the router, the
lifecycle tracker with the partner status API, or the timeline service with the query API."""

from __future__ import annotations

import sys

USAGE = "usage: python -m referral {intake|router|tracker|timeline [--rebuild]}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["timeline"]:
        from referral.entrypoints.timeline_main import main as run_timeline

        return run_timeline(argv[1:])
    if len(argv) != 1 or argv[0] not in {"intake", "router", "tracker"}:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "intake":
        from referral.entrypoints.intake_main import main as run_intake

        run_intake()
    elif argv[0] == "router":
        from referral.entrypoints.router_app import main as run_router

        run_router()
    else:
        from referral.entrypoints.tracker_main import main as run_tracker

        run_tracker()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
