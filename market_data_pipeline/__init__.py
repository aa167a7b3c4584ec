"""Execution of mdp: bus adapters, producers, micro-batcher, features, inference, telemetry, CLI."""
