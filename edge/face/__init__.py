"""The face front-end: the one place that defines how a photo becomes a model input."""
