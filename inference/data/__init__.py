"""Labelled images: SpineWeb dataset 16, COCO annotations, the phantom (and its DICOM forms), augmentation."""
