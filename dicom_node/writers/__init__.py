"""DICOM writers for a prediction: the SEG, the TID 1500 SR and the overlay Secondary Capture."""

from dicom_node.writers.outputs import Outputs, build_outputs
from dicom_node.writers.overlay import build_overlay
from dicom_node.writers.seg import build_segmentation
from dicom_node.writers.sr import build_measurement_report

__all__ = ["Outputs", "build_measurement_report", "build_outputs", "build_overlay", "build_segmentation"]
