"""Property-based and coverage-guided tests of bad input at the gRPC intake and on Kafka."""
