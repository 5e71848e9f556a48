"""Kafka clients as qmsflow configures them: admin (topics) and producers."""
