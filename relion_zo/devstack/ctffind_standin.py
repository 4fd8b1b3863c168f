"""``relion-zo-ctffind-aspire``: ASPIRE CTF estimation speaking CTFFIND 4.1's protocol.

CTFFIND is in no package registry, so a machine built from this project's files has no CTF
estimator for RELION 3.1's CtfFind job. This program stands in for the ``ctffind`` executable
that job runs (``relion_run_ctffind --is_ctffind4 --ctffind_exe <this program>``): it reads the
answers RELION writes into a here-document on its standard input, estimates the CTF with
ASPIRE's estimator (PyPI ``aspire``, ``aspire.ctf.CtfEstimator``), and writes what RELION reads
back: the summary ``<output>.txt`` named on the log's "Summary of results" line, the diagnostic
image ``<output>.ctf`` and ``<output>_avrot.txt``. It is not CTFFIND and says so in every file it
writes. A facility with CTFFIND names CTFFIND as ``executables.ctffind`` in its site file.

Two processes, because ASPIRE lives in its own environment (see docs/ctffind-standin.md):

* ``main(argv)`` (the console script) runs in relion_zo's environment: it speaks the protocol,
  checks the answers, starts the estimator and writes the text outputs. It imports no ASPIRE.
* ``python ctffind_standin.py`` (this file run by path) is the estimator: it runs in the
  interpreter that has ASPIRE, reads one JSON request on stdin, writes the diagnostic image and
  prints one JSON result. Only the standard library, numpy and mrcfile are imported at the top,
  so both environments can load this file.

What is ASPIRE's and what is not: the multitaper power spectrum, the Fourier-Bessel radial and
elliptical averages, the 1D defocus search (``opt1d``), the moment-based astigmatism start
(``pca``) and the gradient-ascent fit of defocus 1, defocus 2 and azimuth (``gd``) are ASPIRE's
methods, called as they are. ASPIRE 0.14.3's two background steps are replaced: its 1D
background linear program lost the bounds that tie it to the spectrum (upstream
ComputationalCryoEM/ASPIRE-Python#417, PR #870) and returns zero, and its 2D background reads the
1D background at half the pixel radius. Here the background is what the method describes, the
largest convex curve under the radial spectrum, placed at the right radius. The 1D search is
given only CTFFIND's resolution band, with the band's falling trend taken out (``_background_1d``);
the centre of a given spectrum is flattened (``_power_spectrum``). The phase-shift search
(ASPIRE has none) scans the extra phase through ASPIRE's own phase term; the fit
resolution and the 1D profiles are this program's own measures (see ``_fit_profiles``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import mrcfile
import numpy as np

PROGRAM = "relion-zo-ctffind-aspire"
DESCRIPTION = "ASPIRE CTF estimation speaking CTFFIND 4.1's protocol (not CTFFIND)"
PROTOCOL = "4.1"
# The ASPIRE release the estimator was written and measured against; others are refused unless
# RELION_ZO_ASPIRE_ANY_VERSION=1, since the two steps replaced here may change upstream.
ASPIRE_VERSION = "0.14.3"
# Where scripts/install-deps.sh makes ASPIRE's environment when RELION_ZO_ASPIRE_VENV is unset.
DEFAULT_VENV = Path("relion_zo") / "aspire-venv"
ESTIMATOR_TIMEOUT = 1800.0  # seconds for one micrograph; a hung estimator must not hang RELION


class ProtocolError(Exception):
    """The answers on stdin are not what CTFFIND 4.1 expects, or ask for what is not done here."""


class EstimatorError(Exception):
    """The estimator could not be run or did not produce a fit."""


@dataclasses.dataclass(frozen=True)
class CtffindRequest:
    """One CTFFIND 4.1 run, as its questions define it (lengths in Å, phases in radians)."""

    input_path: str
    output_path: str
    pixel_size: float
    voltage: float
    cs: float
    amplitude_contrast: float
    box_size: int
    min_resolution: float
    max_resolution: float
    min_defocus: float
    max_defocus: float
    defocus_step: float
    astigmatism_tolerance: float | None = None  # None: no restraint
    exhaustive_search: bool = False
    find_phase_shift: bool = False
    min_phase_shift: float = 0.0
    max_phase_shift: float = 0.0
    phase_shift_step: float = 0.0
    input_is_movie: bool = False
    frames_to_average: int = 1
    amplitude_spectrum_input: bool = False
    threads: int = 1


@dataclasses.dataclass(frozen=True)
class CtfFit:
    """The estimate, in CTFFIND's terms: defocus 1 lies along ``azimuth`` (degrees from x)."""

    defocus_1: float
    defocus_2: float
    azimuth: float
    phase_shift: float  # radians
    score: float
    fit_resolution: float  # Å; 0.0 when it could not be measured
    pixel_size: float  # the pixel size the fit was made at
    estimator: str = f"ASPIRE {ASPIRE_VERSION}"
    notes: tuple[str, ...] = ()
    spatial_frequency: tuple[float, ...] = ()  # 1/Å, the 1D profiles' abscissa
    rotational_average: tuple[float, ...] = ()
    rotational_average_astig: tuple[float, ...] = ()
    ctf_fit: tuple[float, ...] = ()
    fit_correlation: tuple[float, ...] = ()
    fit_correlation_2sigma: tuple[float, ...] = ()


# --------------------------------------------------------------------------------------------
# The protocol: CTFFIND 4.1's questions, answered one line each on stdin
# --------------------------------------------------------------------------------------------


class _Answers:
    """Reads one answer a line and echoes each question with it, as CTFFIND's prompts do."""

    def __init__(self, lines: Iterator[str], echo: Callable[[str], None]) -> None:
        self._lines = lines
        self._echo = echo

    def _next(self, question: str, default: str) -> str:
        try:
            answer = next(self._lines).strip()
        except StopIteration:
            raise ProtocolError(f"stdin ended before the answer to {question!r}") from None
        self._echo(f"{question} [{default}]{' ' * max(1, 42 - len(question) - len(default))}: "
                   f"{answer}")
        return answer or default

    def text(self, question: str, default: str) -> str:
        return self._next(question, default)

    def number(self, question: str, default: str) -> float:
        answer = self._next(question, default)
        try:
            value = float(answer)
        except ValueError:
            raise ProtocolError(f"{question}: {answer!r} is not a number") from None
        if not math.isfinite(value):
            raise ProtocolError(f"{question}: {answer!r} is not a finite number")
        return value

    def integer(self, question: str, default: str) -> int:
        value = self.number(question, default)
        if value != int(value):
            raise ProtocolError(f"{question}: {value} is not a whole number")
        return int(value)

    def yes_no(self, question: str, default: str) -> bool:
        answer = self._next(question, default).lower()
        if answer in ("yes", "y", "1", "true"):
            return True
        if answer in ("no", "n", "0", "false"):
            return False
        raise ProtocolError(f"{question}: {answer!r} is neither yes nor no")


def _number_of_sections(path: str) -> int:
    """How many 2D sections (frames) an MRC file holds; CTFFIND asks about movies if > 1."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            return int(mrc.header.nz) if int(mrc.header.nz) > 0 else 1
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"cannot read the input image {path}: {exc}") from None


def read_interactive(
    lines: Iterator[str], echo: Callable[[str], None], *, amplitude_spectrum_input: bool,
    threads: int = 1,
) -> CtffindRequest:
    """CTFFIND 4.1.8+'s interactive questions, in the order RELION 3.1 answers them.

    RELION 3.1.3 (``src/ctffind_runner.cpp``, ``CtffindRunner::executeCtffind4``) writes: input
    image [then "yes" and the number of frames to average, for movies], output diagnostic name,
    pixel size, voltage, Cs, amplitude contrast, box, min. and max. resolution, min. and max.
    defocus, defocus step, "no" (astigmatism not known), yes/no (exhaustive search), "yes"
    (restrain astigmatism), the tolerated astigmatism, yes/no (phase shift) [then min, max and
    step in radians], "no" (expert options).
    """
    ask = _Answers(lines, echo)
    input_path = ask.text("Input image file name", "input.mrc")
    is_movie, frames = False, 1
    if not amplitude_spectrum_input and _number_of_sections(input_path) > 1:
        is_movie = ask.yes_no("Input is a movie (stack of frames)", "no")
        if is_movie:
            frames = ask.integer("Number of frames to average together", "1")
    output_path = ask.text("Output diagnostic image file name", "diagnostic_output.mrc")
    values = {
        "pixel_size": ask.number("Pixel size", "1.0"),
        "voltage": ask.number("Acceleration voltage", "300.0"),
        "cs": ask.number("Spherical aberration", "2.70"),
        "amplitude_contrast": ask.number("Amplitude contrast", "0.07"),
        "box_size": ask.integer("Size of amplitude spectrum to compute", "512"),
        "min_resolution": ask.number("Minimum resolution", "30.0"),
        "max_resolution": ask.number("Maximum resolution", "5.0"),
        "min_defocus": ask.number("Minimum defocus", "5000.0"),
        "max_defocus": ask.number("Maximum defocus", "50000.0"),
        "defocus_step": ask.number("Defocus search step", "100.0"),
    }
    if ask.yes_no("Do you know what astigmatism is present?", "no"):
        raise ProtocolError(
            "a known astigmatism is not supported by this stand-in (ASPIRE fits it freely); "
            "answer 'no' as RELION does"
        )
    exhaustive = ask.yes_no("Slower, more exhaustive search?", "no")
    tolerance: float | None = None
    if ask.yes_no("Use a restraint on astigmatism?", "yes"):
        tolerance = ask.number("Expected (tolerated) astigmatism", "200.0")
        if tolerance < 0:
            tolerance = None
    phase = ask.yes_no("Find additional phase shift?", "no")
    phase_range = (0.0, 0.0, 0.0)
    if phase:
        phase_range = (
            ask.number("Minimum phase shift (rad)", "0.0"),
            ask.number("Maximum phase shift (rad)", "3.15"),
            ask.number("Phase shift search step", "0.2"),
        )
    if ask.yes_no("Do you want to set expert options?", "no"):
        raise ProtocolError(
            "expert options are not supported by this stand-in; answer 'no' as RELION does"
        )
    return _checked(CtffindRequest(
        input_path=input_path, output_path=output_path, **values,
        astigmatism_tolerance=tolerance, exhaustive_search=exhaustive,
        find_phase_shift=phase, min_phase_shift=phase_range[0], max_phase_shift=phase_range[1],
        phase_shift_step=phase_range[2], input_is_movie=is_movie, frames_to_average=frames,
        amplitude_spectrum_input=amplitude_spectrum_input, threads=threads,
    ))


def _fields(line: str, count: int, which: str) -> list[float]:
    parts = [part.strip() for part in line.split(",")]
    if len(parts) == 1:
        parts = line.split()
    if len(parts) != count:
        raise ProtocolError(f"{which}: expected {count} values, got {line.strip()!r}")
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise ProtocolError(f"{which}: not all numbers in {line.strip()!r}") from None


def read_old_school(
    lines: Iterator[str], echo: Callable[[str], None], *, ctffind4_lines: bool,
    amplitude_spectrum_input: bool, threads: int = 1,
) -> CtffindRequest:
    """CTFFIND3-style input (``--old-school-input[-ctffind4]``), as RELION 2.x/3.0 wrote it.

    Lines: input; output; ``Cs, HT, AmpCnst, XMAG, DStep[um]``; ``Box, ResMin, ResMax, dFMin,
    dFMax, FStep, dAst``; with ``-ctffind4`` also ``movie flag, frames`` and ``phase flag, min,
    max, step``. A dAst of 0 means no astigmatism restraint, as CTFFIND reads it.
    """
    def line(what: str) -> str:
        try:
            text = next(lines).rstrip("\n")
        except StopIteration:
            raise ProtocolError(f"stdin ended before the line with {what}") from None
        echo(f"{what}: {text.strip()}")
        return text

    input_path = line("input image").strip()
    output_path = line("output diagnostic image").strip()
    cs, voltage, amplitude, xmag, dstep = _fields(
        line("CS[mm], HT[kV], AmpCnst, XMAG, DStep[um]"), 5, "line 3")
    box, res_min, res_max, df_min, df_max, df_step, d_ast = _fields(
        line("Box, ResMin[A], ResMax[A], dFMin[A], dFMax[A], FStep[A], dAst[A]"), 7, "line 4")
    is_movie, frames, phase, phase_range = False, 1, False, (0.0, 0.0, 0.0)
    if ctffind4_lines:
        movie_flag, frames_value = _fields(line("movie flag, frames to average"), 2, "line 5")
        is_movie = int(movie_flag) != 0
        frames = int(frames_value) if is_movie else 1
        phase_flag, *phase_values = _fields(line("phase flag, min, max, step"), 4, "line 6")
        phase = int(phase_flag) != 0
        if phase:
            phase_range = (phase_values[0], phase_values[1], phase_values[2])
    if xmag <= 0:
        raise ProtocolError(f"line 3: XMAG must be positive, got {xmag}")
    return _checked(CtffindRequest(
        input_path=input_path, output_path=output_path, pixel_size=dstep * 1e4 / xmag,
        voltage=voltage, cs=cs, amplitude_contrast=amplitude, box_size=int(box),
        min_resolution=res_min, max_resolution=res_max, min_defocus=df_min,
        max_defocus=df_max, defocus_step=df_step,
        astigmatism_tolerance=d_ast if d_ast > 0 else None, find_phase_shift=phase,
        min_phase_shift=phase_range[0], max_phase_shift=phase_range[1],
        phase_shift_step=phase_range[2], input_is_movie=is_movie, frames_to_average=frames,
        amplitude_spectrum_input=amplitude_spectrum_input, threads=threads,
    ))


def _checked(request: CtffindRequest) -> CtffindRequest:
    """CTFFIND's own limits on the answers, so a bad value fails with its name."""
    r = request
    problems = []
    if not r.pixel_size > 0:
        problems.append(f"pixel size must be positive, got {r.pixel_size}")
    if not r.voltage > 0:
        problems.append(f"acceleration voltage must be positive, got {r.voltage}")
    if r.cs < 0:
        problems.append(f"spherical aberration must not be negative, got {r.cs}")
    if not 0 <= r.amplitude_contrast < 1:
        problems.append(f"amplitude contrast must be in [0, 1), got {r.amplitude_contrast}")
    if r.box_size < 64 and not r.amplitude_spectrum_input:
        problems.append(f"the spectrum size must be at least 64 pixels, got {r.box_size}")
    if not r.min_resolution > r.max_resolution > 0:
        problems.append(
            f"minimum resolution ({r.min_resolution} Å) must be above maximum resolution "
            f"({r.max_resolution} Å), both positive"
        )
    if not 0 < r.min_defocus < r.max_defocus:
        problems.append(
            f"defocus range must be positive and increasing (underfocus), got "
            f"{r.min_defocus}..{r.max_defocus} Å"
        )
    if r.max_defocus - r.min_defocus < 10:
        problems.append("the defocus range must span at least 10 Å (ASPIRE searches in nm)")
    if r.find_phase_shift:
        if not r.min_phase_shift <= r.max_phase_shift:
            problems.append("minimum phase shift must not exceed the maximum")
        if not r.phase_shift_step > 0:
            problems.append(f"phase shift step must be positive, got {r.phase_shift_step}")
    if r.input_is_movie and r.frames_to_average < 1:
        problems.append(f"frames to average must be at least 1, got {r.frames_to_average}")
    if problems:
        raise ProtocolError("; ".join(problems))
    return r


# --------------------------------------------------------------------------------------------
# CTFFIND 4.1's output files, which RELION 3.1 reads
# --------------------------------------------------------------------------------------------


def summary_path(output_path: str) -> str:
    """CTFFIND's summary file: the diagnostic file name with its extension replaced by .txt."""
    root, _ = os.path.splitext(output_path)
    return root + ".txt"


def avrot_path(output_path: str) -> str:
    return os.path.splitext(output_path)[0] + "_avrot.txt"


def _header(request: CtffindRequest, fit: CtfFit, now: datetime.datetime) -> list[str]:
    # RELION 3.1.3 (getCtffind4Results) takes words 3, 8, 13 and 18 of the line with
    # "acceleration voltage:" as pixel size, kV, Cs and amplitude contrast; the line below the
    # one with "Columns: " is the result. Neither phrase may appear elsewhere.
    stamp = now.strftime("%Y-%m-%d %H:%M:%S")
    return [
        f"# Output from {PROGRAM}: {DESCRIPTION}; estimator {fit.estimator}; run on {stamp}",
        f"# Input file: {request.input_path} ; Number of micrographs: 1",
        (f"# Pixel size: {fit.pixel_size:0.3f} Angstroms ; acceleration voltage: "
         f"{request.voltage:0.1f} keV ; spherical aberration: {request.cs:0.2f} mm ; "
         f"amplitude contrast: {request.amplitude_contrast:0.2f}"),
        (f"# Box size: {request.box_size} pixels ; min. res.: {request.min_resolution:0.1f} "
         f"Angstroms ; max. res.: {request.max_resolution:0.1f} Angstroms ; min. def.: "
         f"{request.min_defocus:0.1f} um; max. def. {request.max_defocus:0.1f} um"),
    ]


def format_summary(request: CtffindRequest, fit: CtfFit, now: datetime.datetime) -> str:
    """The ``.txt`` file: header comments, the Columns line, then one line of 7 numbers."""
    lines = _header(request, fit, now)
    lines.append(
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
        "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross "
        "correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully"
    )
    values = (1.0, fit.defocus_1, fit.defocus_2, fit.azimuth, fit.phase_shift, fit.score,
              fit.fit_resolution)
    lines.append(" ".join(f"{value:.6f}" for value in values))
    return "\n".join(lines) + "\n"


def format_avrot(request: CtffindRequest, fit: CtfFit, now: datetime.datetime) -> str:
    """``_avrot.txt``: CTFFIND's six rows of 1D profiles (RELION 3.1 does not read them)."""
    lines = _header(request, fit, now)
    lines[3] += f"; num. frames averaged: {request.frames_to_average}"
    lines.append(
        "# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); #2 - 1D rotational "
        "average of spectrum (assuming no astigmatism); #3 - 1D rotational average of spectrum; "
        "#4 - CTF fit; #5 - cross-correlation between spectrum and CTF fit; #6 - 2sigma of "
        "expected cross correlation of noise"
    )
    for row in (fit.spatial_frequency, fit.rotational_average, fit.rotational_average_astig,
                fit.ctf_fit, fit.fit_correlation, fit.fit_correlation_2sigma):
        lines.append(" ".join(f"{value:.6f}" for value in row))
    return "\n".join(lines) + "\n"


def format_results(request: CtffindRequest, fit: CtfFit) -> list[str]:
    """The end of CTFFIND's log; RELION reads the path after "Summary of results"."""
    lines = [
        (f"Estimated defocus values        : {fit.defocus_1:0.2f} , {fit.defocus_2:0.2f} "
         "Angstroms"),
        f"Estimated azimuth of astigmatism: {fit.azimuth:0.2f} degrees",
    ]
    if request.find_phase_shift:
        lines.append(
            f"Additional phase shift          : {math.degrees(fit.phase_shift):0.3f} degrees "
            f"({fit.phase_shift:0.3f} radians) ({fit.phase_shift / math.pi:0.3f} pi)"
        )
    lines += [
        f"Score                           : {fit.score:0.5f}",
        f"Pixel size for fitting          : {fit.pixel_size:0.3f} Angstroms",
        f"Thon rings with good fit up to  : {fit.fit_resolution:0.1f} Angstroms",
        "",
        f"Summary of results                          : {summary_path(request.output_path)}",
        f"Diagnostic images                           : {request.output_path}",
        f"Detailed results, including 1D fit profiles : {avrot_path(request.output_path)}",
        "",
    ]
    return lines


# --------------------------------------------------------------------------------------------
# Finding ASPIRE and running the estimator
# --------------------------------------------------------------------------------------------


def aspire_python(environ: dict[str, str] | None = None) -> str | None:
    """The interpreter with ASPIRE: ``RELION_ZO_ASPIRE_PYTHON``, else the venv that
    scripts/install-deps.sh makes (``RELION_ZO_ASPIRE_VENV``, default
    ``${XDG_DATA_HOME:-~/.local/share}/relion_zo/aspire-venv``), else this interpreter if it
    can import aspire. None when there is none."""
    env = os.environ if environ is None else environ
    explicit = env.get("RELION_ZO_ASPIRE_PYTHON")
    if explicit:
        return explicit
    venv = env.get("RELION_ZO_ASPIRE_VENV")
    if not venv:
        data_home = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser()
                                                     / ".local" / "share")
        venv = str(Path(data_home) / DEFAULT_VENV)
    candidate = Path(venv) / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    import importlib.util

    if importlib.util.find_spec("aspire") is not None:
        return sys.executable
    return None


_ASPIRE_CONFIG = """\
logging:
  log_dir: {log_dir}
  log_exceptions: 0
  tqdm_disable: True
  console_level: WARNING
  log_file_level: WARNING
"""


def run_estimator(request: CtffindRequest, python: str, timeout: float = ESTIMATOR_TIMEOUT
                  ) -> CtfFit:
    """Runs this file under ``python`` (which has ASPIRE) on one request; returns its fit.

    ASPIRE configures logging and makes a ``logs`` folder in its working directory when it is
    imported, so the estimator runs in a private temporary folder with its own ASPIRE
    configuration (``ASPIREDIR``); the request's paths are made absolute first.
    """
    absolute = dataclasses.replace(
        request, input_path=os.path.abspath(request.input_path),
        output_path=os.path.abspath(request.output_path),
    )
    with tempfile.TemporaryDirectory(prefix="relion-zo-ctffind-aspire-") as scratch:
        (Path(scratch) / "config.yaml").write_text(_ASPIRE_CONFIG.format(log_dir=scratch))
        env = dict(os.environ)
        threads = str(max(1, request.threads))
        env.update(ASPIREDIR=scratch, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads, MPLBACKEND="Agg",
                   PYTHONDONTWRITEBYTECODE="1")
        try:
            done = subprocess.run(
                [python, os.path.abspath(__file__)],
                input=json.dumps(dataclasses.asdict(absolute)), capture_output=True, text=True,
                cwd=scratch, env=env, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            raise EstimatorError(f"the ASPIRE estimator took longer than {timeout:.0f} s") from None
        except OSError as exc:
            raise EstimatorError(f"cannot start {python}: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise EstimatorError(f"the ASPIRE estimator failed (exit {done.returncode}):\n{tail}")
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EstimatorError(f"the ASPIRE estimator printed no result: {done.stdout!r}") from None
    result["notes"] = tuple(result.get("notes", ()))
    for key in ("spatial_frequency", "rotational_average", "rotational_average_astig",
                "ctf_fit", "fit_correlation", "fit_correlation_2sigma"):
        result[key] = tuple(result.get(key, ()))
    return CtfFit(**result)


# --------------------------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=f"{DESCRIPTION}: a stand-in for the ctffind executable of RELION 3.1's "
        "CtfFind job. Answers are read from stdin, one per line, as CTFFIND 4.1 asks them.",
    )
    parser.add_argument("--old-school-input", action="store_true",
                        help="CTFFIND3-style input lines (no phase shift, no movies)")
    parser.add_argument("--old-school-input-ctffind4", action="store_true",
                        help="CTFFIND3-style input lines plus CTFFIND4's movie and phase lines")
    parser.add_argument("--amplitude-spectrum-input", action="store_true",
                        help="the input image is an amplitude spectrum (RELION's --use_given_ps)")
    parser.add_argument("--omp-num-threads", type=int, default=1, metavar="N",
                        help="threads for the numerical libraries (default 1)")
    parser.add_argument("--fast", action="store_true",
                        help="accepted for compatibility; the fit statistics are always made")
    parser.add_argument("--filtered-amplitude-spectrum-input", action="store_true",
                        help="not supported: refused with a message")
    parser.add_argument("--version", action="store_true", help="print what this program is")
    return parser


def main(argv: list[str] | None = None, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None, timeout: float = ESTIMATOR_TIMEOUT) -> int:
    """The console script: CTFFIND 4.1's protocol in, CTFFIND 4.1's files out.

    Exit status 0 with the files written, 1 when the answers are refused or the estimate
    failed (the reason is in the log, which RELION keeps as ``<mic>_ctffind4.log``), 2 for a
    bad command line.
    """
    args = _parser().parse_args(argv)
    out = sys.stdout if stdout is None else stdout
    source = sys.stdin if stdin is None else stdin

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    say(f"        **   Welcome to {PROGRAM}   **")
    say(f"   {DESCRIPTION}.")
    say(f"   CTF estimation by ASPIRE (aspire.ctf); the answers follow CTFFIND {PROTOCOL}.")
    say("")
    if args.version:
        say(f"{PROGRAM} for relion_zo; estimator ASPIRE {ASPIRE_VERSION} (tested)")
        return 0
    if args.filtered_amplitude_spectrum_input:
        say("Error: --filtered-amplitude-spectrum-input is not supported by this stand-in")
        return 1
    lines = iter(source.readline, "")
    try:
        if args.old_school_input or args.old_school_input_ctffind4:
            request = read_old_school(
                lines, say, ctffind4_lines=args.old_school_input_ctffind4,
                amplitude_spectrum_input=args.amplitude_spectrum_input,
                threads=args.omp_num_threads)
        else:
            request = read_interactive(
                lines, say, amplitude_spectrum_input=args.amplitude_spectrum_input,
                threads=args.omp_num_threads)
    except ProtocolError as exc:
        say(f"Error: {exc}")
        return 1
    python = aspire_python()
    if python is None:
        say("Error: ASPIRE is not installed: run scripts/install-deps.sh, or set "
            "RELION_ZO_ASPIRE_PYTHON to a Python that has aspire "
            f"{ASPIRE_VERSION}")
        return 1
    say("")
    say(f"Estimating the CTF with ASPIRE (interpreter {python}) ...")
    try:
        fit = run_estimator(request, python, timeout)
    except EstimatorError as exc:
        say(f"Error: {exc}")
        return 1
    for note in fit.notes:
        say(f"Note: {note}")
    now = datetime.datetime.now()
    Path(summary_path(request.output_path)).write_text(format_summary(request, fit, now))
    Path(avrot_path(request.output_path)).write_text(format_avrot(request, fit, now))
    say("")
    for line in format_results(request, fit):
        say(line)
    return 0


# --------------------------------------------------------------------------------------------
# The estimator: runs in the interpreter that has ASPIRE (this file run by path)
# --------------------------------------------------------------------------------------------


def _lower_convex_envelope(values: np.ndarray) -> np.ndarray:
    """The largest convex curve lying under ``values`` (sampled at 0, 1, ...).

    This is the background ASPIRE's ``background_subtract_1d`` describes (a convex background
    under the spectrum, as large as possible) without the linear program that ASPIRE 0.14.3 runs
    unbounded; the lower hull gives the same optimum directly.
    """
    hull: list[int] = []
    for i, value in enumerate(values):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (values[b] - values[a]) * (i - a) >= (value - values[a]) * (b - a):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(np.arange(len(values)), hull, values[hull])


def _background_1d(radial: np.ndarray, band: tuple[int, int], cutoffs: int = 14
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted radial spectra, one row per low-frequency cutoff 1..cutoffs-1, as
    ASPIRE's ``opt1d`` expects them (3/4 of the radius to Nyquist, as ASPIRE takes it).

    CTFFIND's resolution band (radii ``band`` in pixels) is honoured, which ``opt1d`` alone does
    not do: the background is fitted from the band's start, and outside the band each row holds
    the mean of its part inside, which ``opt1d``'s own mean subtraction turns into zeros.
    Without this the strong low-frequency power of particles, or rings aliased beyond the band,
    decide the 1D defocus.
    """
    profile = radial[: 3 * radial.shape[0] // 4].astype(np.float64)
    length = profile.shape[0]
    signal = np.zeros((cutoffs - 1, length))
    background = np.ones((cutoffs - 1, length))
    stop = min(max(band[1], band[0] + 4), length)
    for cutoff in range(1, cutoffs):
        start = min(max(cutoff, band[0]), stop - 3)
        envelope = _lower_convex_envelope(profile[start:])
        row = signal[cutoff - 1]
        row[start:] = profile[start:] - envelope
        # The rings' amplitude falls across the band (envelope, the particles' own spectrum);
        # that trend, not the rings, would decide opt1d's correlation, so a quadratic trend of
        # the square root is taken out (opt1d takes square roots, hence the squares here).
        amplitude = np.sqrt(np.maximum(row[start:stop], 0))
        radius = np.arange(start, stop)
        amplitude -= np.polyval(np.polyfit(radius, amplitude, 2), radius)
        row[start:stop] = (amplitude - min(0.0, float(amplitude.min()))) ** 2
        # opt1d correlates square roots, so the filling is the squared mean square root
        row[cutoff:start] = row[stop:] = np.sqrt(np.maximum(row[start:stop], 0)).mean() ** 2
        background[cutoff - 1, start:] = envelope
        background[cutoff - 1, :start] = profile[:start]
    return signal, background


def _background_2d(psd: np.ndarray, background: np.ndarray, skip: int) -> np.ndarray:
    """The 1D background placed at each pixel's radius and subtracted (clipped at zero); the
    centre (radius <= skip + 2 pixels) is zeroed, as ASPIRE does."""
    n = psd.shape[-1]
    y, x = np.mgrid[-(n // 2): n - n // 2, -(n // 2): n - n // 2]
    radius = np.hypot(x, y)
    row = background[skip]
    level = np.interp(radius, np.arange(row.shape[0]), row)
    out = np.maximum(psd - level, 0.0)
    out[radius <= skip + 2] = 0.0
    return out


def _read_input(request: CtffindRequest) -> np.ndarray:
    with mrcfile.open(request.input_path, mode="r", permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float64)
    if data.ndim == 2:
        data = data[np.newaxis]
    return data


def _spectrum_size(request: CtffindRequest, data: np.ndarray, notes: list[str]) -> int:
    """The (even) size of the square spectrum to fit."""
    size = min(data.shape[1:]) if request.amplitude_spectrum_input else min(
        request.box_size, *data.shape[1:])
    size -= size % 2
    if request.amplitude_spectrum_input and size != request.box_size:
        notes.append(f"the given spectrum is {size} pixels; box size {request.box_size} unused")
    elif not request.amplitude_spectrum_input and size != request.box_size:
        notes.append(f"the micrograph is smaller than the box; box {size} used")
    return size


def _power_spectrum(request: CtffindRequest, data: np.ndarray, size: int, estimator: Any
                    ) -> np.ndarray:
    """The centred power spectrum (``size`` square) to fit."""
    if request.amplitude_spectrum_input:
        # RELION's MotionCorr writes the sum of |F| over frame groups, centred at N/2 (its
        # logical origin), already cropped to a pixel size >= 1.4 Å; power is its square. Its
        # origin holds the image's mean, far above the rest: ASPIRE's Fourier-Bessel averages
        # would spread that spike over every radius, so the centre takes its surroundings' level.
        power = data[0, :size, :size] ** 2
        y, x = np.mgrid[-(size // 2): size - size // 2, -(size // 2): size - size // 2]
        radius = np.hypot(x, y)
        power[radius < 2.5] = np.median(power[(radius >= 2.5) & (radius < 4.5)])
        return power
    frames = data
    if request.input_is_movie and frames.shape[0] > 1:
        group = max(1, request.frames_to_average)
        frames = np.stack([frames[i: i + group].mean(axis=0)
                           for i in range(0, frames.shape[0] - group + 1, group)])
    elif frames.shape[0] > 1:
        raise ValueError("the input is a stack; CTFFIND reads a stack only as a movie")
    tapers = estimator.tapers(size, 1.0, 2)  # ASPIRE's defaults: 2 tapers, half bandwidth 1
    total = np.zeros((size, size))
    for frame in frames:
        blocks = estimator.preprocess_micrograph(frame.astype(estimator.dtype), size)
        if blocks.shape[0] == 0:
            raise ValueError(f"the micrograph ({frame.shape}) holds no {size}-pixel block")
        total += estimator.estimate_psd(blocks, tapers).asnumpy()[0]
    return total / frames.shape[0]


def _fit_profiles(
    amplitude: np.ndarray, pixel: float, wavelength_nm: float, cs: float, phase: float,
    df1_nm: float, df2_nm: float, angle: float, r_nm: np.ndarray, theta: np.ndarray,
    res_min: float,
) -> dict[str, Any]:
    """1D profiles and the fit resolution, measured here (not ASPIRE's).

    Every pixel of the background-subtracted amplitude spectrum is moved to the radius where
    the CTF of the mean defocus has the same phase (CTFFIND's "rotational average taking
    astigmatism into account"); the profile is then compared with |CTF| by a Pearson
    correlation over a window of one CTF period around each radius. The fit resolution is the
    last radius, from the first CTF zero on, before that correlation falls below 0.5 after
    more than 3 radii above it (or below 0.2 after more than 3 above 0.2), the thresholds
    CTFFIND 4.1 uses on its own curve; to Nyquist when it never falls.
    """
    n = amplitude.shape[0]
    mean_df = 0.5 * (df1_nm + df2_nm)
    a = np.pi * wavelength_nm * r_nm**2
    c = 0.5 * np.pi * wavelength_nm**3 * cs * 1e6 * r_nm**4
    defocus = mean_df + 0.5 * (df1_nm - df2_nm) * np.cos(2 * (theta - angle))
    target = a * defocus - c  # the pixel's CTF phase without the constant term
    # Radius (in 1/nm) where the mean-defocus CTF has that phase: solve
    # (pi/2) Cs lambda^3 K^2 - pi lambda mean_df K + target = 0 for K = r^2 (smaller root).
    qa = 0.5 * np.pi * wavelength_nm**3 * cs * 1e6
    qb = np.pi * wavelength_nm * mean_df
    if qa > 0:
        disc = np.maximum(qb**2 - 4 * qa * target, 0.0)
        k2 = (qb - np.sqrt(disc)) / (2 * qa)
    else:
        k2 = target / qb
    r_eq = np.sqrt(np.maximum(k2, 0.0))
    step = 10.0 / (n * pixel)  # one pixel in 1/nm
    bins = n // 2
    index_eq = np.clip(np.rint(r_eq / step).astype(int), 0, bins - 1)
    index_rot = np.clip(np.rint(r_nm / step).astype(int), 0, bins - 1)
    inside = r_nm <= (bins - 1) * step
    counts_eq = np.bincount(index_eq[inside], minlength=bins)
    counts_rot = np.bincount(index_rot[inside], minlength=bins)
    astig = np.bincount(index_eq[inside], amplitude[inside], bins) / np.maximum(counts_eq, 1)
    rot = np.bincount(index_rot[inside], amplitude[inside], bins) / np.maximum(counts_rot, 1)
    radius = np.arange(bins) * step
    chi = np.pi * wavelength_nm * mean_df * radius**2 - qa * radius**4 + phase
    fit = np.abs(np.sin(chi))
    # One CTF period around each radius: from the zero below it to the zero above it (the
    # radii where chi passes a multiple of pi), and at least 3 radii either side.
    turns = np.floor(chi / np.pi)
    zeros = np.flatnonzero(np.diff(turns) != 0) + 1
    correlation = np.zeros(bins)
    sigma = np.ones(bins)
    for i in range(bins):
        k = int(np.searchsorted(zeros, i, side="right"))
        lo = int(zeros[k - 1]) if k > 0 else 0
        hi = int(zeros[k]) if k < zeros.shape[0] else bins - 1
        lo, hi = max(0, min(lo, i - 3)), min(bins - 1, max(hi, i + 3))
        x, y = astig[lo: hi + 1], fit[lo: hi + 1]
        if x.std() > 0 and y.std() > 0:
            correlation[i] = float(np.corrcoef(x, y)[0, 1])
        sigma[i] = 2.0 / math.sqrt(hi - lo + 1)
    first_zero = int(zeros[0]) if zeros.shape[0] else 1
    low_cut = max(first_zero, math.ceil(10.0 / res_min / step))
    above_low = above_high = 0
    last_good = 0
    for i in range(low_cut, bins):
        if (above_low > 3 and correlation[i] < 0.2) or (above_high > 3 and correlation[i] < 0.5):
            last_good = i
            break
        above_low += correlation[i] > 0.2
        above_high += correlation[i] > 0.5
    else:
        last_good = bins - 1 if above_high > 3 else 0
    resolution = 10.0 / radius[last_good] if last_good > 0 else 0.0
    scale = float(np.percentile(astig[low_cut:], 99)) if bins > low_cut else 1.0
    return {
        "fit_resolution": float(resolution),
        "spatial_frequency": (radius / 10.0).tolist(),
        "rotational_average": rot.tolist(),
        "rotational_average_astig": astig.tolist(),
        "ctf_fit": (fit * scale).tolist(),
        "fit_correlation": correlation.tolist(),
        "fit_correlation_2sigma": sigma.tolist(),
    }


def _diagnostic(spectrum: np.ndarray, ctf_abs: np.ndarray, inner: float) -> np.ndarray:
    """CTFFIND-like diagnostic image: the spectrum ASPIRE fitted (its elliptical average of the
    background-subtracted amplitudes) on the right, the fitted |CTF| on the left, both scaled
    to 0..1 between radius ``inner`` and Nyquist and blank outside."""
    n = spectrum.shape[0]
    y, x = np.mgrid[-(n // 2): n - n // 2, -(n // 2): n - n // 2]
    radius = np.hypot(x, y)
    ring = (radius > inner) & (radius < n // 2)
    values = spectrum[ring]
    low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    shown = np.clip((spectrum - low) / ((high - low) or 1.0), 0.0, 1.0)
    shown[x < 0] = ctf_abs[x < 0]
    shown[~ring] = 0.0
    return shown.astype(np.float32)


def estimate(request: CtffindRequest) -> CtfFit:
    """ASPIRE's CTF estimation on one micrograph or given spectrum (run with ASPIRE)."""
    import aspire
    from aspire.basis import FFBBasis2D
    from aspire.ctf import CtfEstimator
    from aspire.image import Image
    from aspire.utils import grid_2d, voltage_to_wavelength

    if aspire.__version__ != ASPIRE_VERSION and os.environ.get(
            "RELION_ZO_ASPIRE_ANY_VERSION") != "1":
        raise RuntimeError(
            f"ASPIRE {aspire.__version__} is installed; this stand-in was built and measured "
            f"with {ASPIRE_VERSION} (set RELION_ZO_ASPIRE_ANY_VERSION=1 to try it anyway)"
        )
    notes: list[str] = []
    dtype = np.float64
    pixel = request.pixel_size
    wavelength_nm = voltage_to_wavelength(request.voltage) / 10.0
    # ASPIRE's amplitude-contrast phase, as its estimate_ctf computes it.
    contrast_phase = math.atan(request.amplitude_contrast
                               / math.sqrt(1.0 - request.amplitude_contrast**2))
    data = _read_input(request)
    n = _spectrum_size(request, data, notes)
    estimator = CtfEstimator(pixel, request.cs, contrast_phase, request.voltage, n, 2,
                             dtype=dtype)
    psd = _power_spectrum(request, data, n, estimator)
    # ASPIRE's background and correlation steps use absolute tolerances; a median of 1 keeps
    # every input (counts, normalised floats, RELION's |F| sums) on the scale they work at.
    median = float(np.median(psd))
    if not median > 0:
        raise ValueError("the power spectrum is empty (a blank micrograph?)")
    observed = Image((psd / median).astype(dtype))
    basis = FFBBasis2D((n, n), 2, dtype=dtype)
    radial, _ = estimator.elliptical_average(basis, observed, True)
    centre = n // 2
    # The fit band: CTFFIND's min./max. resolution, kept inside what ASPIRE can index.
    res_min = min(request.min_resolution, n * pixel / 4)
    res_max = max(request.max_resolution, 2 * pixel * (n / 2) / (n / 2 - 2))
    if res_max != request.max_resolution:
        notes.append(f"maximum resolution {request.max_resolution} Å is beyond Nyquist; "
                     f"{res_max:.2f} Å used")
    if res_min != request.min_resolution:
        notes.append(f"minimum resolution {request.min_resolution} Å is outside the spectrum; "
                     f"{res_min:.1f} Å used")
    df_lo = max(1, math.floor(request.min_defocus / 10.0))  # ASPIRE searches in nm
    df_hi = max(df_lo + 1, math.ceil(request.max_defocus / 10.0))

    band = (math.ceil(n * pixel / res_min), math.floor(n * pixel / res_max))  # in pixels
    signal_1d, background_1d = _background_1d(radial.asnumpy()[0, centre, centre:], band)

    skip = 12  # ASPIRE's estimate_ctf fixes the low-frequency skip of the 2D step at 12 pixels
    amplitude = np.sqrt(_background_2d(observed.asnumpy()[0], background_1d, skip))
    ratio = estimator.pca(observed, pixel, res_min, res_max)
    elliptical, _ = estimator.elliptical_average(basis, Image(amplitude.astype(dtype)), False)
    grid = grid_2d(n, normalized=True, indexing="yx", dtype=dtype)
    r_nm = grid["r"] / 2 * (10 / pixel)
    theta = grid["phi"]

    if request.find_phase_shift:
        span = request.max_phase_shift - request.min_phase_shift
        count = math.floor(span / request.phase_shift_step + 1e-9) + 1
        phases = [request.min_phase_shift + i * request.phase_shift_step for i in range(count)]
    else:
        phases = [0.0]
    # ASPIRE starts its fit from six azimuths 30 degrees apart; CTFFIND's "slower, more
    # exhaustive search" answer chooses those six, otherwise every other one (60 degrees apart).
    starts = range(6) if request.exhaustive_search else range(0, 6, 2)

    def fit(extra: float, df1: float, df2: float, angle: float) -> tuple[float, ...]:
        """ASPIRE's gradient ascent from one start, with ``extra`` added to its phase term."""
        got = estimator.gd(elliptical, df1, df2, angle, r_nm, theta, pixel, res_min, res_max,
                           contrast_phase + extra, wavelength_nm, request.cs)
        return float(got[3]), float(got[0]), float(got[1]), float(got[2]), extra

    best: tuple[float, ...] = (-math.inf,)  # score, df1, df2, angle (radians), extra phase
    for extra in phases:
        mean_df, _ = estimator.opt1d(signal_1d, pixel, request.cs, wavelength_nm,
                                     contrast_phase + extra, n, min_defocus=df_lo,
                                     max_defocus=df_hi)
        start_1 = (mean_df * 2) / (1 + ratio)
        start_2 = mean_df * 2 - start_1
        for k in starts:
            best = max(best, fit(extra, start_1, start_2, -5 / 12 * np.pi + k * np.pi / 6))
    score, df1, df2, angle, extra = best
    if df2 > df1:
        df1, df2, angle = df2, df1, angle + np.pi / 2
    # ASPIRE fits the transposed spectrum, so its azimuth is mirrored about the diagonal:
    # CTFFIND's (and RELION's) azimuth from the x axis is 90 degrees minus ASPIRE's.
    azimuth = (90.0 - math.degrees(angle) + 90.0) % 180.0 - 90.0
    if not request.min_defocus <= 5 * (df1 + df2) <= request.max_defocus:
        notes.append("the fitted mean defocus lies outside the search range")
    if request.astigmatism_tolerance is not None:
        notes.append("ASPIRE applies no astigmatism restraint; the tolerated astigmatism "
                     f"({request.astigmatism_tolerance:g} Å) is not used")
    spectrum_t = amplitude.T  # ASPIRE's frame (see above), so its r and theta grids apply
    profiles = _fit_profiles(spectrum_t, pixel, wavelength_nm, request.cs,
                             contrast_phase + extra, df1, df2, angle, r_nm, theta, res_min)
    chi = (np.pi * wavelength_nm * r_nm**2 * (0.5 * (df1 + df2) + 0.5 * (df1 - df2)
                                              * np.cos(2 * (theta - angle)))
           - 0.5 * np.pi * wavelength_nm**3 * request.cs * 1e6 * r_nm**4
           + contrast_phase + extra)
    diagnostic = _diagnostic(elliptical.asnumpy()[0], np.abs(np.sin(chi)).T, band[0])
    with mrcfile.new(request.output_path, overwrite=True) as mrc:
        mrc.set_data(diagnostic)
        mrc.voxel_size = pixel
    return CtfFit(
        defocus_1=df1 * 10.0, defocus_2=df2 * 10.0, azimuth=azimuth, phase_shift=extra,
        score=score, pixel_size=pixel, estimator=f"ASPIRE {aspire.__version__}",
        notes=tuple(notes), **profiles,
    )


def _estimator_main() -> int:
    """This file run by path, in the interpreter with ASPIRE: JSON request in, JSON fit out."""
    request = CtffindRequest(**json.loads(sys.stdin.read()))
    fit = estimate(request)
    print(json.dumps(dataclasses.asdict(fit)))
    return 0


if __name__ == "__main__":
    sys.exit(_estimator_main())
