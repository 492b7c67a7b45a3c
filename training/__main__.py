"""``python -m training``: the command line of ``training.cli``."""

from training.cli import app

app()
