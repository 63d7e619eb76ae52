"""dnibench: reproducible benchmarks for Decoupled Neural Interfaces."""
__version__ = "0.1.0"
