"""The torch-free base every layer may use: machine info, fidelity metrics and gates, data sets.

Imports nothing from runtimes/, exporter/, benchmarks/ or cli (tests/test_layers.py checks)."""
