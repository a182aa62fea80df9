"""`python -m streams` is the `geodispatch` command."""

from streams.cli import main

main()
