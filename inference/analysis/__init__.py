"""What is read off a segmentation: vertebra levels, corners, Cobb angles, T1 tilt, and the overlap metrics."""
