"""llama.cpp's GGUF block formats (codecs land here); see refquant.gguf.types for the type table."""
