"""Publishing to the pipeline: a small library upstream services can use or copy, and the city simulator."""
