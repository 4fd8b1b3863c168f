"""relion_zo's embeddable relion_it driver (RELION 3.1 semantics, no globals, no exits)."""

from __future__ import annotations

from relion_zo.relion_it.driver import DriverResult, Progress, run_driver

__all__ = ["DriverResult", "Progress", "run_driver"]
