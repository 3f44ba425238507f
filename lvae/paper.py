"""`python -m lvae.paper`: the command lives in lvae/cli/paper.py."""

from lvae.cli.paper import main

if __name__ == "__main__":
    main()
