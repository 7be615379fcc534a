"""`python -m referral intake|router|tracker`: the gRPC intake, the faust router, or the
lifecycle tracker with the partner status API."""

from __future__ import annotations

import sys

USAGE = "usage: python -m referral {intake|router|tracker}"


def main(argv: list[str]) -> int:
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
