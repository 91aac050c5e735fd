"""A NumPy Llama runtime for GGUF models."""
