"""slimq: salience-driven mixed-precision post-training quantization for LLMs."""
__version__ = "0.1.0"
