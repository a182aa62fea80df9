"""Reading from the pipeline: the reference downstream consumer, `consume` for debugging, and the DLQ tools."""
