"""Training: the loop, a whole run, compiled and eager alike, the fast paths."""
