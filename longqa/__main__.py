"""``python -m longqa`` runs the CLI."""

from longqa.cli.app import main

main()
