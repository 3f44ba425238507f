"""`python -m lvae.report`: the command lives in lvae/cli/report.py."""

from lvae.cli.report import main

main()
