"""What every subcommand shares: options for the site file, opening the database, errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from relion_zo.config import SiteConfig, load_config
from relion_zo.db import make_engine
from relion_zo.errors import RelionZoError


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="site file (default: $RELION_ZO_CONFIG)"
    )


def open_site(args: argparse.Namespace) -> tuple[SiteConfig, Engine]:
    config = load_config(args.config)
    return config, make_engine(config.credentials_path())


def guarded(func: Callable[[], int]) -> int:
    """Run a command body; user errors become one line on stderr and exit status 1."""
    try:
        return func()
    except RelionZoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:
        reason = str(exc.orig) if exc.orig is not None else str(exc)
        print(f"error: database: {reason}", file=sys.stderr)
        return 1


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
