"""The one shared library: the plumbing every service needs and none should write twice.

Event envelope (CloudEvents headers), Kafka publish and consume loops with trace propagation and
dead-lettering, the gRPC server bootstrap with health and reflection, tracing setup, and
contract-driven redaction. Services hold domain logic and thin adapters over this.
"""
