"""Dataset builders for long-context training. See ``data_builders.registry`` for the list."""
