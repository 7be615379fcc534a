"""Local development stack: a real single-node Kafka broker for `make run` and the tests."""
