"""Thin Ray wrappers: the training worker in its own process, driven by the notebook's controller."""
