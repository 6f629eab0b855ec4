"""Typer command-line interface. Each command group lives in its own module; ``app.py`` wires them."""
