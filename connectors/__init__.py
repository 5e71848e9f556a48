"""Connectors: where qmsflow's topics meet other systems (the Postgres sink, Debezium configs)."""
