"""Fixtures for a real Apache Kafka broker (see scripts/kafka.sh)."""
