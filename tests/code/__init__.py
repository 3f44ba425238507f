"""The code itself: its layers, its public APIs, the Python face."""
