"""Agents, one module per domain; streams.app autodiscovers them."""
