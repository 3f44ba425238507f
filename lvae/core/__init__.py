"""The equations: distributions -> models -> objectives -> evaluation, and the analysis statistics."""
