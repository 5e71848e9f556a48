"""`python -m qmsflow …` is the `qmsflow` command."""

from qmsflow.cli import entry

entry()
