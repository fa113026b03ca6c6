"""The flows and the engine that runs them (see engine.py)."""
