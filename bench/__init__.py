"""Measurements of the node on this machine: ``spinenode bench`` (``node_bench``) and the scripts beside it
(latency with real radiographs, reliability under faults, scale-out, a look at the DICOM corpus)."""
