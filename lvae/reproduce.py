"""`python -m lvae.reproduce`: the command lives in lvae/cli/reproduce.py."""

from lvae.cli.reproduce import main

if __name__ == "__main__":
    main()
