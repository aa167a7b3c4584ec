"""Inference: the safe rule language, the rules and sklearn adapters, the engine."""
