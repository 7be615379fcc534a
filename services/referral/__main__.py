"""`python -m referral intake` runs the gRPC intake; `python -m referral router` the router."""

from __future__ import annotations

import sys

USAGE = "usage: python -m referral {intake|router}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in {"intake", "router"}:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "intake":
        from referral.entrypoints.intake_main import main as run_intake

        run_intake()
    else:
        from referral.entrypoints.router_app import main as run_router

        run_router()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
