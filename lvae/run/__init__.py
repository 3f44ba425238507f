"""One run: its settings and schema, its folder and record, checkpoints, the training loop and its lifecycle."""
