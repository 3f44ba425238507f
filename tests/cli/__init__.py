"""The config schema, its checks and every preset."""
