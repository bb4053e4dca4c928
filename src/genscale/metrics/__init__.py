"""Feature extractors and the metrics computed on their features."""
