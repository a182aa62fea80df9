"""Broker, Redis and the topic plan: what the pipeline runs on."""
