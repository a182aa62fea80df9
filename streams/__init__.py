"""The stream processor: one Faust app whose agents keep driver sessions and assign drivers."""
