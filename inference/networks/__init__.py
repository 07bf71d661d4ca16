"""The networks: the architecture registry (``architectures``), the dense decoder, and the seed app's models."""
