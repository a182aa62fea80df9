"""The benchmark suite of `make bench`: scenarios, baselines, load generators and the results table."""
