"""`python -m lvae.report`: see lvae/report/__init__.py."""

from . import main

main()
