"""Test double of Ollama: the stand-in binary, its release builder and model pushes."""
