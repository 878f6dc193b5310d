"""`python -m evals.cli` runs the `adl` command line."""

from evals.cli import main

main()
