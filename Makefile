# Two commands matter: `make run` (the whole system with a local Kafka broker) and `make test`.
# Both install what they need first; running them again is fast and changes nothing.

PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help prerequisites setup run test lint typecheck generate check-generated clean kafka-jars bench fuzz chaos manifests

help:
	@echo "make run       start Kafka, every service and a demo feed (Ctrl-C stops everything)"
	@echo "make test      run the whole test suite against a real Kafka broker"
	@echo "make lint      ruff and mypy"
	@echo "make bench     the pipeline on a real broker next to raw Kafka, and policy simulate's rate"
	@echo "               (BENCH_QUICK=1 for a short, rough run)"
	@echo "make fuzz      long coverage-guided fuzzing of the intake and every record consumer"
	@echo "make chaos     only the chaos run: faults under load with exact accounting (part of make test)"
	@echo "make generate  regenerate protobuf code after changing protos/"
	@echo "make manifests regenerate deploy/k8s's Kafka topics and users (after a policy change)"
	@echo "make clean     remove the virtual environment, local data and build output"

prerequisites:
	@command -v $(PYTHON_BIN) >/dev/null 2>&1 || { echo "missing $(PYTHON_BIN): install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv)"; exit 1; }
	@command -v java >/dev/null 2>&1 || { echo "missing java: install OpenJDK 17 (e.g. apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null 2>&1 || { echo "missing mvn: install Maven (e.g. apt-get install maven); it fetches Kafka's jars"; exit 1; }

$(STAMP): requirements.lock pyproject.toml | prerequisites
	@echo "setup: creating $(VENV) and installing pinned dependencies"
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -r requirements.lock
	@$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

kafka-jars: $(STAMP)
	@$(PY) -m devstack.broker fetch

setup: $(STAMP) kafka-jars

generate: $(STAMP)
	@$(PY) -m devstack.codegen generate
	@$(PY) -m devstack.descriptors

manifests: $(STAMP)
	@$(PY) -m devstack.kafka_resources write

check-generated: $(STAMP)
	@$(PY) -m devstack.codegen check

run: setup
	@$(PY) -m devstack.run

lint: $(STAMP)
	@$(VENV)/bin/ruff check services tests
	@$(VENV)/bin/mypy services

test: setup lint
	@$(PY) -m pytest

bench: setup
	@$(PY) -m devstack.bench
	@$(PY) -m devstack.bench_policy $(if $(filter-out 0,$(BENCH_QUICK)),--count 20000 --repeat 1 --output .run/bench-quick/policy_simulate.json)

chaos: setup
	@$(PY) -m pytest -m chaos tests/chaos

fuzz: $(STAMP)
	@$(PY) -m devstack.fuzz all --runs 200000

clean:
	rm -rf $(VENV) .run build deploy/kafka/lib
