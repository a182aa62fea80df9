"""The handlers, one module per domain; streams.topology says which topic each reads and wires them."""
