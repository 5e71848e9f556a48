"""Faust agents: thin adapters that run qmsflow's pure stages on Kafka."""
