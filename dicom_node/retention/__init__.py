"""Keeping the data directory in check: which files may go (``policy``), and the pass that prunes them."""
