"""Entry point: `python -m launcher create|update|delete ...` (see launcher/cli.py)."""

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main(install_signal_handlers=True))
