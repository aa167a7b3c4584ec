"""Inference adapters behind the ``InferenceAdapter`` protocol: ``rules`` and ``sklearn``."""
