"""``python -m eco_trio bench``: a load generator that checks every reply."""
