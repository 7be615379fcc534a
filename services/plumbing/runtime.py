"""Process plumbing every service entry point shares: logging and a clean stop on signals."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def configure_logging(service_name: str) -> None:
    """One line per record, prefixed with the service name, to stderr.

    Log calls in this code base pass ids, counts and exception types only, never field values
    of a referral: the PII scan test checks every line.
    """
    logging.basicConfig(
        level=os.environ.get("CTROUTE_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {service_name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def stop_on_signals() -> threading.Event:
    """An event that is set on SIGINT or SIGTERM, so loops can finish their batch and exit."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop
