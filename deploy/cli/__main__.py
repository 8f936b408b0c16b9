"""`python -m deploy.cli`: the same program as the installed `deploy` script."""

from . import main

if __name__ == "__main__":
    main()
