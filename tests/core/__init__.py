"""The equations against closed forms: densities, models, bounds, evaluation, the numbers' version."""
