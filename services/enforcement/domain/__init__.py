"""Enforcement domain logic, free of Kafka, gRPC and protobuf."""
