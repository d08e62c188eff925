"""Reproducible benchmarks that print their figures."""
