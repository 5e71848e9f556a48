"""Debezium source connectors: configs shared by the local stack and Helm, and registration."""
