"""Shared pytest fixtures.

Kafka: one real single-node broker (``devstack.broker.EmbeddedKafka``) per test session, on
free ports, with its data in the session's pytest tmp dir. The first run fetches the broker
jars with Maven (about a minute); later runs reuse ``deploy/kafka/lib``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.broker import EmbeddedKafka, Progress, free_port_pair

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Session fixtures that more than one folder uses (the fuzz tests reuse the running system and
# the intake server): declared once here, so a full run starts each of them once.
pytest_plugins = ("tests.e2e.system", "tests.integration.intake")


def _terminal_progress(config: pytest.Config) -> Progress:
    """Progress lines that reach the terminal even while pytest captures output."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def show(message: str) -> None:
        suspended = (
            capture.global_and_fixture_disabled()
            if capture is not None
            else contextlib.nullcontext()
        )
        with suspended:
            if reporter is not None:
                # In -q mode the progress dots do not end their line: start a fresh one.
                writer = getattr(reporter, "_tw", None)
                if writer is not None and writer.width_of_current_line:
                    reporter.write("\n")
                reporter.write_line(message)
            else:
                print(message, file=sys.__stderr__, flush=True)

    return show


@pytest.fixture(scope="session")
def kafka_progress(pytestconfig: pytest.Config) -> Progress:
    """Callback that prints broker progress lines on the terminal (not captured)."""
    return _terminal_progress(pytestconfig)


@pytest.fixture(scope="session")
def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory, kafka_progress: Progress
) -> Iterator[EmbeddedKafka]:
    """A running broker shared by the whole session; stopped when the session ends."""
    port, controller_port = free_port_pair()
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp("kafka"),
        port,
        controller_port,
        project_root=PROJECT_ROOT,
        progress=kafka_progress,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: EmbeddedKafka) -> str:
    """``127.0.0.1:<port>`` of the session broker."""
    return kafka_broker.bootstrap_servers
