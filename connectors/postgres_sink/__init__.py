"""The Postgres sink: Kafka topics → `qms` tables, offsets committed with the rows."""
