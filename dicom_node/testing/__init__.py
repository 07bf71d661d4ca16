"""Peers and helpers shared by the test suite, ``spinenode bench`` and the scripts in ``bench/``."""
