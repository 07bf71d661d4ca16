"""Training and evaluating the models: the segmentation recipe, the level models and the top-of-spine pass."""
