"""Conversion, parity, evaluation, benchmarks and reports over the two frameworks."""
