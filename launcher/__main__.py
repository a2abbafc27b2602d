"""Entry point: `python -m launcher create|update|delete ...` (see launcher/cli.py)."""

import sys

from pcluster_ad.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main(install_signal_handlers=True))
