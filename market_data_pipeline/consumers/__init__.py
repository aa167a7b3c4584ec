"""Consumer stages: the micro-batcher (events -> bars), the inference consumer (bars -> signals)."""
