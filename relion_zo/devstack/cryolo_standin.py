"""``relion-zo-cryolo-apple``: ASPIRE's APPLE particle picker speaking crYOLO's prediction
protocol.

crYOLO needs a GPU framework and a trained model that no package registry here holds, so a
machine built from this project's files has no crYOLO. This program stands in for crYOLO's
``cryolo_predict.py`` where relion_zo's crYOLO job runs it (``executables.cryolo``; see
``relion_zo.relion_it.cryolo_job``): the same arguments (``--conf config.json -i <folder> -o
<folder> --weights <model> --gpu <ids> --threshold <t>``) and crYOLO's STAR output,
``<output>/STAR/<micrograph>.star`` with ``_rlnCoordinateX``/``_rlnCoordinateY``. It picks with
APPLE (Heimowitz, Andén and Singer, J. Struct. Biol. 204 (2018) 215-227; PyPI ``aspire``,
``aspire.apple.Apple``): an SVM trained per micrograph on windows that cross-correlation ranks
as surely particle and surely noise. It is not crYOLO and says so in every file it writes:

- the box size is crYOLO's anchors in the configuration, and is APPLE's particle size;
- the model (``--weights``) must exist, as crYOLO requires, but APPLE trains its own classifier
  on each micrograph and reads no model;
- APPLE gives no per-particle confidence, so ``--threshold`` is checked (0 to 1, as crYOLO's)
  and not applied; ``--gpu`` is checked and not used (APPLE runs on the CPU);
- APPLE's settings for a 4,000-pixel micrograph are scaled to the micrograph's size: its
  training windows (3 % particle, 30 % noise of the query windows) and its container.
  Micrographs are binned by 2 and lose a 10-pixel margin, as APPLE's own defaults do for their
  size (APPLE's margins of ~100 pixels would take a fifth of a 1,024-pixel micrograph).

Two processes, as ``relion-zo-ctffind-aspire``: ``main`` runs in relion_zo's environment and
imports no ASPIRE; this file run by path in ASPIRE's environment (``aspire_python``) picks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROGRAM = "relion-zo-cryolo-apple"
DESCRIPTION = "ASPIRE's APPLE picker, not crYOLO"
MICROGRAPH_SUFFIXES = (".mrc",)
PICKER_TIMEOUT = 3600.0  # seconds for one call; a hung picker must not hang RELION
APPLE_MICROGRAPH = 4000  # the micrograph size APPLE's defaults are set for (pixels)
APPLE_CONTAINER = 450  # APPLE's container for that size
APPLE_SHRINK = 2
MARGIN = 10


class StandinError(RuntimeError):
    """One line saying what is wrong."""


def apple_settings(particle_size: int, side: int) -> dict[str, int]:
    """APPLE's parameters for a micrograph ``side`` pixels across (after the margins)."""
    query = round(particle_size * 2 / 3)
    query -= query % 4
    if query < 4:
        raise StandinError(f"a box of {particle_size} pixels is too small for APPLE")
    windows = side**2 / query**2 * 4  # APPLE's q_box, for this micrograph
    return {
        "particle_size": particle_size,
        "query_image_size": query,
        "tau1": max(1, int(windows * 0.03)),
        "tau2": max(2, int(windows * 0.3)),
        "container_size": max(particle_size, round(APPLE_CONTAINER * side / APPLE_MICROGRAPH)),
        "mrc_shrink_factor": APPLE_SHRINK,
        "mrc_margin_left": MARGIN, "mrc_margin_right": MARGIN,
        "mrc_margin_top": MARGIN, "mrc_margin_bottom": MARGIN,
        "conv_map_nthreads": 1,
    }


def box_size(config: Path) -> int:
    """crYOLO's box size: the anchors of its configuration."""
    try:
        anchors = json.loads(config.read_text())["model"]["anchors"]
        size = int(anchors[0])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise StandinError(f"--conf {config}: no model.anchors box size ({exc})") from None
    if size < 6:
        raise StandinError(f"--conf {config}: box size {size} is too small")
    return size


def star_text(centres: list[tuple[float, float]]) -> str:
    lines = [f"# {PROGRAM}: {DESCRIPTION}; crYOLO's STAR output format\n",
             "\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"]
    lines += [f"{x:.1f} {y:.1f}\n" for x, y in centres]
    return "".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=f"{DESCRIPTION}: a stand-in for crYOLO's cryolo_predict.py")
    parser.add_argument("-c", "--conf", required=True, type=Path)
    parser.add_argument("-w", "--weights", required=True, type=Path)
    parser.add_argument("-i", "--input", required=True, nargs="+", type=Path)
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("-t", "--threshold", type=float, default=0.3)
    parser.add_argument("-g", "--gpu", nargs="+", default=["0"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not 0 <= args.threshold <= 1:
            raise StandinError(f"--threshold {args.threshold:g} is not between 0 and 1")
        if not all(g.replace(",", " ").replace(" ", "").isdigit() for g in args.gpu):
            raise StandinError(f"--gpu {' '.join(args.gpu)}: GPU ids are numbers")
        if not args.weights.is_file():
            raise StandinError(f"--weights {args.weights}: no such model file")
        size = box_size(args.conf)
        inputs: list[Path] = []
        for item in args.input:
            if item.is_dir():
                inputs += sorted(p for p in item.iterdir() if p.suffix in MICROGRAPH_SUFFIXES)
            elif item.is_file():
                inputs.append(item)
            else:
                raise StandinError(f"-i {item}: no such file or folder")
        out = args.output / "STAR"
        out.mkdir(parents=True, exist_ok=True)
        if inputs:
            picks = run_picker([str(p.resolve()) for p in inputs], size)
            for path, centres in zip(inputs, picks, strict=True):
                target = out / f"{path.stem}.star"
                target.write_text(star_text([tuple(c) for c in centres]))
                print(f"{PROGRAM}: {path.name}: {len(centres)} particles", flush=True)
    except StandinError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


_ASPIRE_CONFIG = """\
logging:
  log_dir: {log_dir}
  log_exceptions: 0
  tqdm_disable: True
  console_level: WARNING
  log_file_level: WARNING
"""


def run_picker(micrographs: list[str], particle_size: int,
               timeout: float = PICKER_TIMEOUT) -> list[list[list[float]]]:
    """This file under ASPIRE's interpreter: the centres (x, y) APPLE picks in each."""
    from relion_zo.devstack.ctffind_standin import aspire_python

    python = aspire_python()
    if python is None:
        raise StandinError("no Python with ASPIRE (scripts/install-deps.sh makes one)")
    with tempfile.TemporaryDirectory(prefix=f"{PROGRAM}-") as scratch:
        (Path(scratch) / "config.yaml").write_text(_ASPIRE_CONFIG.format(log_dir=scratch))
        env = dict(os.environ, ASPIREDIR=scratch, OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        request = {"micrographs": micrographs, "particle_size": particle_size,
                   "scratch": scratch}
        try:
            done = subprocess.run([python, os.path.abspath(__file__)], input=json.dumps(request),
                                  capture_output=True, text=True, cwd=scratch, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise StandinError(f"APPLE took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StandinError(f"APPLE failed (exit {done.returncode}): {tail[0]}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])["picks"]
    except (ValueError, IndexError, KeyError):
        raise StandinError("APPLE printed no result") from None


def _pick(request: dict) -> dict:
    """In ASPIRE's environment: APPLE on each micrograph."""
    import mrcfile
    import numpy as np
    from aspire.apple.apple import Apple

    picks = []
    for number, name in enumerate(request["micrographs"]):
        with mrcfile.open(name, permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
        if data.ndim != 2:
            raise StandinError(f"{name} is not a single micrograph")
        # ASPIRE's reader wants the pixel size APPLE does not pass: a copy without one
        copy = Path(request["scratch"]) / f"micrograph_{number}.mrc"
        with mrcfile.new(copy, overwrite=True) as mrc:
            mrc.set_data(data)
        side = min(data.shape) - 2 * MARGIN
        apple = Apple(**apple_settings(request["particle_size"], side))
        centres = apple.process_micrograph_centers(str(copy))
        picks.append([[float(x), float(y)] for x, y in np.asarray(centres).reshape(-1, 2)])
        copy.unlink()
    return {"picks": picks}


if __name__ == "__main__":
    if len(sys.argv) == 1 and not sys.stdin.isatty():  # the picker, in ASPIRE's environment
        print(json.dumps(_pick(json.loads(sys.stdin.read()))))
    else:
        sys.exit(main())
