"""Evaluation commands: eval, calibrate, bench (registered on the main app)."""
