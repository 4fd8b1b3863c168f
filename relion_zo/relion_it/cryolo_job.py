"""``relion-zo-cryolo-job``: crYOLO picking as a RELION 3.1 External job.

RELION 3.1 has no crYOLO job; relion_it 3.1 no crYOLO option. Diamond's relion_it adds one
(``autopick_do_cryolo``, which PATo's form ticks). relion_zo runs crYOLO where a site names it
(``executables.cryolo``, crYOLO's ``cryolo_predict.py``, and ``cryolo_weights``, its model) as
RELION's own External job type, so RELION's pipeliner schedules it, its GUI shows it, and
``relion_it.py --continue`` carries it on under relion_it's ``autopick_job`` name.

RELION runs ``<this program> --o External/jobNNN/ --in_mics CtfFind/jobNNN/micrographs_ctf.star
--box_size N --threshold T --cryolo <cryolo_predict.py> --weights <model> --gpu G --j 1`` in
the project. Each run picks the micrographs it has not picked before:

- links them into ``<job>/cryolo_input/`` and runs crYOLO's prediction on that folder
  (``cryolo_predict.py --conf <job>/config.json -i ... -o <job>/cryolo_output --weights ...
  --gpu ... --threshold ...``; the configuration holds the box size as crYOLO's anchors);
- turns crYOLO's ``STAR/<micrograph>.star`` files into RELION's coordinate files, beside the
  micrographs' own paths as AutoPick writes them (``<job>/Movies/.../<name>_autopick.star``), so
  Extract reads them as AutoPick's (``coords_suffix_autopick.star``);
- writes ``summary.star`` as RELION 3.1's AutoPick does (a row per micrograph, the particles in
  it), ``RELION_OUTPUT_NODES.star`` (the coordinates node, which the pipeliner adds), and
  ``RELION_JOB_EXIT_SUCCESS``, or ``RELION_JOB_EXIT_FAILURE`` with one line saying why.

No shell: crYOLO runs from an argument list. Only the standard library is imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

SUFFIX = "_autopick.star"  # AutoPick's, so Extract and RELION's GUI read them alike
COORDS_SUFFIX_FILE = "coords_suffix_autopick.star"
NODE_MIC_COORDS = 2  # RELION 3.1's node type of a coords_suffix file
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
PICKED_BY = "# picked by crYOLO ({program}) through relion-zo-cryolo-job\n"
PREDICT_TIMEOUT = 6 * 3600.0


class CryoloJobError(RuntimeError):
    """Why the job failed, in one line."""


def _rows(text: str, labels: Sequence[str]) -> list[dict[str, str]]:
    """Rows of the first loop that has all of ``labels`` (a STAR file, simple tokens)."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip().startswith("loop_"):
            names: list[str] = []
            index += 1
            while index < len(lines) and lines[index].strip().startswith("_"):
                names.append(lines[index].split()[0])
                index += 1
            rows = []
            while index < len(lines):
                line = lines[index].strip()
                if not line or line.startswith(("data_", "loop_")):
                    break
                if not line.startswith("#"):
                    rows.append(dict(zip(names, line.split())))
                index += 1
            if all(label in names for label in labels):
                return rows
            continue
        index += 1
    return []


def micrographs(project: Path, in_mics: str) -> list[str]:
    """``_rlnMicrographName`` of the input STAR file (project-relative)."""
    try:
        text = (project / in_mics).read_text()
    except OSError as exc:
        raise CryoloJobError(f"cannot read {in_mics}: {exc.strerror}") from None
    names = [row["_rlnMicrographName"] for row in _rows(text, ["_rlnMicrographName"])]
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or len(path.parts) < 3:
            raise CryoloJobError(f"{in_mics} names {name!r}, not a micrograph of a job")
    return names


def coordinate_file(job: str, micrograph: str) -> str:
    """Where RELION's Extract looks for a micrograph's coordinates: the job folder, then the
    micrograph's path without its own job folder (``MotionCorr/job002/``)."""
    rest = PurePosixPath(*PurePosixPath(micrograph).parts[2:])
    return str(PurePosixPath(job) / rest.with_suffix("")) + SUFFIX


def cryolo_coordinates(path: Path) -> list[tuple[float, float, str]]:
    """(x, y, confidence) of crYOLO's STAR output for one micrograph."""
    rows = _rows(path.read_text(), ["_rlnCoordinateX", "_rlnCoordinateY"])
    return [(float(row["_rlnCoordinateX"]), float(row["_rlnCoordinateY"]),
             row.get("_rlnAutopickFigureOfMerit", "-999")) for row in rows]


def write_coordinates(path: Path, picks: list[tuple[float, float, str]], program: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [PICKED_BY.format(program=program), "\ndata_\n\nloop_\n", "_rlnCoordinateX #1\n",
             "_rlnCoordinateY #2\n", "_rlnClassNumber #3\n", "_rlnAutopickFigureOfMerit #4\n",
             "_rlnAnglePsi #5\n"]
    lines += [f"{x:12.6f} {y:12.6f}            0 {fom:>12} -999.000000\n"
              for x, y, fom in picks]
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(lines) + "\n")
    tmp.replace(path)


def write_config(path: Path, box_size: int) -> None:
    """crYOLO's configuration for prediction: PhosaurusNet, its general model's input size, the
    box size as anchors, and its default low-pass filter."""
    config = {
        "model": {"architecture": "PhosaurusNet", "input_size": 1024,
                  "anchors": [box_size, box_size], "max_box_per_image": 700,
                  "norm": "STANDARD", "filter": [0.1, str(path.parent / "filtered_tmp") + "/"]},
        "other": {"log_path": str(path.parent / "logs") + "/"},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


def pick(project: Path, job: str, in_mics: str, *, box_size: int, threshold: float,
         cryolo: str, weights: str, gpu: str,
         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """Pick every micrograph of ``in_mics`` not picked before; returns how many were new."""
    folder = project / job
    names = micrographs(project, in_mics)
    todo = [name for name in names if not (project / coordinate_file(job, name)).exists()]
    if todo:
        inputs, outputs = folder / "cryolo_input", folder / "cryolo_output"
        for stale in (inputs, outputs / "STAR"):
            if stale.is_dir():
                for entry in stale.iterdir():
                    entry.unlink()
        inputs.mkdir(parents=True, exist_ok=True)
        stems: dict[str, str] = {}
        for number, name in enumerate(todo):
            # crYOLO names its outputs by the input's file name: make each one unique
            stem = f"{number:06d}_{PurePosixPath(name).stem}"
            stems[name] = stem
            (inputs / f"{stem}.mrc").symlink_to(project / name)
        config = folder / "config.json"
        write_config(config, box_size)
        argv = [cryolo, "--conf", str(config), "-i", str(inputs), "-o", str(outputs),
                "--weights", weights, "--gpu", gpu, "--threshold", f"{threshold:g}"]
        print(" relion-zo-cryolo-job: " + " ".join(argv), flush=True)
        done = run(argv, cwd=folder, stdin=subprocess.DEVNULL, check=False,
                   timeout=PREDICT_TIMEOUT)
        if done.returncode != 0:
            raise CryoloJobError(f"crYOLO ({cryolo}) exited with status {done.returncode}")
        for name in todo:
            star = outputs / "STAR" / f"{stems[name]}.star"
            # crYOLO writes no file for a micrograph where it found nothing
            picks = cryolo_coordinates(star) if star.exists() else []
            write_coordinates(project / coordinate_file(job, name), picks, cryolo)
        for entry in inputs.iterdir():
            entry.unlink()
    write_summary(project, job, names)
    (folder / COORDS_SUFFIX_FILE).write_text(in_mics + "\n")
    (folder / "RELION_OUTPUT_NODES.star").write_text(
        "\ndata_output_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n_rlnPipeLineNodeType #2\n"
        f"{job}{COORDS_SUFFIX_FILE} {NODE_MIC_COORDS}\n\n")
    return len(todo)


def write_summary(project: Path, job: str, names: list[str]) -> None:
    """``summary.star`` as RELION 3.1's AutoPick writes it: a row per micrograph picked."""
    rows = []
    for name in names:
        path = project / coordinate_file(job, name)
        if path.exists():
            count = len(_rows(path.read_text(), ["_rlnCoordinateX"]))
            rows.append(f"{name} -999.000000 {count}\n")
    text = ("\n# version 30001\n\ndata_\n\nloop_\n_rlnMicrographName #1\n"
            "_rlnAutopickFigureOfMerit #2\n_rlnGroupNrParticles #3\n" + "".join(rows) + "\n")
    (project / job / "summary.star").write_text(text)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relion-zo-cryolo-job", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--o", required=True, help="the job's folder (RELION gives it)")
    parser.add_argument("--in_mics", required=True, help="micrographs STAR file")
    parser.add_argument("--box_size", type=int, required=True, help="crYOLO's box (pixels)")
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--cryolo", required=True, help="crYOLO's cryolo_predict.py")
    parser.add_argument("--weights", required=True, help="crYOLO's model (.h5)")
    parser.add_argument("--gpu", default="0")
    parser.add_argument("--j", type=int, default=1, help="threads (RELION gives it; unused)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    project = Path.cwd()
    job = args.o if args.o.endswith("/") else args.o + "/"
    folder = project / job
    folder.mkdir(parents=True, exist_ok=True)
    for name in (EXIT_SUCCESS, EXIT_FAILURE):
        (folder / name).unlink(missing_ok=True)
    try:
        if PurePosixPath(job).is_absolute() or ".." in PurePosixPath(job).parts:
            raise CryoloJobError(f"--o {job} is not a job folder of the project")
        new = pick(project, job, args.in_mics, box_size=args.box_size,
                   threshold=args.threshold, cryolo=args.cryolo, weights=args.weights,
                   gpu=args.gpu)
        print(f" relion-zo-cryolo-job: picked {new} new micrograph(s)", flush=True)
    except (CryoloJobError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"relion-zo-cryolo-job: {exc}", file=sys.stderr, flush=True)
        (folder / EXIT_FAILURE).touch()
        return 1
    (folder / EXIT_SUCCESS).touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
