"""`python -m service [--host H] [--port P] [--demo]` serves the app."""

import sys

from service.cli import app

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "serve", *sys.argv[1:]]
    app()
