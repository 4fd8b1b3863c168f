"""relion-zo-ctffind-aspire: CTFFIND 4.1's protocol in, ASPIRE's CTF estimate out, as RELION 3.1
runs it.

Synthetic micrographs and movies of known CTF are made here (RELION's CTF, ``CTF::getCTF``,
applied in Fourier space to particles in an amorphous layer, with an envelope, a smooth
background and detector noise). The program runs for real: in-process through ``main`` (which
starts the ASPIRE estimator as a child process), and as the ``ctffind`` executable of RELION's
own ``relion_run_ctffind`` (through ``csh``, as RELION runs it), from micrographs and from the
power spectra of ``relion_run_motioncorr``. They need scripts/install-deps.sh (the ASPIRE venv,
tcsh, RELION) and no server; where those are missing they fail, they never skip.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from relion_zo.devstack import ctffind_standin as standin

PROGRAM = shutil.which("relion-zo-ctffind-aspire")
TOLERANCE = 0.05  # defocus U and V within 5 % of the truth
RELION_TIMEOUT = 300  # seconds for one RELION program
ESTIMATE_TIMEOUT = 120  # seconds for one micrograph


# --------------------------------------------------------------------------------------------
# Synthetic data of known CTF
# --------------------------------------------------------------------------------------------


def wavelength(kv: float) -> float:
    """Relativistic electron wavelength in Å."""
    volts = kv * 1e3
    return 12.2643247 / math.sqrt(volts * (1 + 0.978466e-6 * volts))


def relion_ctf(n: int, apix: float, du: float, dv: float, angle: float, *, kv=300.0, cs=2.7,
               q0=0.1, phase=0.0, bfactor=100.0) -> np.ndarray:
    """RELION's CTF on the fft2 grid (rows y, columns x): sin(pi lambda df k^2 - pi/2 Cs
    lambda^3 k^4 + atan(Q0/sqrt(1-Q0^2)) + phase), df(theta) = (U+V)/2 + (U-V)/2 cos(2 (theta -
    angle)), times the envelope exp(-B k^2 / 4)."""
    ky = np.fft.fftfreq(n, apix)[:, None]
    kx = np.fft.fftfreq(n, apix)[None, :]
    k2 = kx**2 + ky**2
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (np.arctan2(ky, kx) - math.radians(angle)))
    lam = wavelength(kv)
    chi = (np.pi * lam * df * k2 - 0.5 * np.pi * cs * 1e7 * lam**3 * k2**2
           + math.atan(q0 / math.sqrt(1 - q0**2)) + phase)
    return np.sin(chi) * np.exp(-bfactor * k2 / 4)


def specimen(n: int, apix: float, rng: np.random.Generator) -> np.ndarray:
    """Particles (Gaussian blobs, 60 Å across) in an amorphous layer (white texture)."""
    field = np.zeros((n, n))
    count = n * n // 4000
    field[rng.integers(0, n, count), rng.integers(0, n, count)] = 1.0
    k2 = np.fft.fftfreq(n, apix)[:, None] ** 2 + np.fft.fftfreq(n, apix)[None, :] ** 2
    particles = np.fft.ifft2(np.fft.fft2(field) * np.exp(-2 * np.pi**2 * 15.0**2 * k2)).real
    particles *= 3.0 / particles.max()
    return particles + rng.standard_normal((n, n))


def image_after_ctf(n, apix, du, dv, angle, seed, **ctf) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ctf_values = relion_ctf(n, apix, du, dv, angle, **ctf)
    return np.fft.ifft2(np.fft.fft2(specimen(n, apix, rng)) * ctf_values).real


def background(n: int, apix: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth, falling background power (ice thickness, inelastic scattering)."""
    k2 = np.fft.fftfreq(n, apix)[:, None] ** 2 + np.fft.fftfreq(n, apix)[None, :] ** 2
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * np.exp(-40 * k2)).real


def write_micrograph(path: Path, n, apix, du, dv, angle, seed=0, **ctf) -> Path:
    rng = np.random.default_rng(seed + 1000)
    data = image_after_ctf(n, apix, du, dv, angle, seed, **ctf) + 2.0 * background(n, apix, rng)
    data += rng.standard_normal((n, n))
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = apix
    return path


def write_movie(path: Path, n, apix, du, dv, angle, frames=8, seed=0) -> Path:
    """Frames that share one CTF-modulated specimen, each with its own counting noise."""
    rng = np.random.default_rng(seed + 2000)
    clean = image_after_ctf(n, apix, du, dv, angle, seed) + 2.0 * background(n, apix, rng)
    stack = np.stack([clean + rng.standard_normal((n, n)) for _ in range(frames)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data((10 * stack + 100).astype(np.float32))
        mrc.voxel_size = apix
    return path


# --------------------------------------------------------------------------------------------
# RELION's side of the protocol
# --------------------------------------------------------------------------------------------


def relion_answers(mic: str, out: str, *, apix=1.4, box=256, dfmin=5000, dfmax=50000,
                   phase: tuple[float, float, float] | None = None) -> str:
    """The here-document RELION 3.1.3 writes (CtffindRunner::executeCtffind4), with the
    CtfFind job's defaults: 300 kV, Cs 2.7, Q0 0.1, 30-5 Å, step 500, dAst 100, fast search."""
    lines = [mic, out, apix, 300, 2.7, 0.1, box, 30, 5, dfmin, dfmax, 500, "no", "no", "yes",
             100]
    lines += ["yes", *phase] if phase else ["no"]
    lines.append("no")
    return "\n".join(str(line) for line in lines) + "\n"


def read_like_relion(summary: Path) -> dict[str, float]:
    """The .txt as RELION 3.1.3 parses it (CtffindRunner::getCtffind4Results)."""
    lines = summary.read_text().splitlines()
    voltage = next(line for line in lines if "acceleration voltage:" in line).split()
    columns = next(i for i, line in enumerate(lines) if "Columns: " in line)
    words = lines[columns + 1].split()
    return {
        "angpix": float(voltage[3]), "kv": float(voltage[8]), "cs": float(voltage[13]),
        "q0": float(voltage[18]), "defocus_u": float(words[1]), "defocus_v": float(words[2]),
        "angle": float(words[3]), "phase": float(words[4]), "cc": float(words[5]),
        "maxres": float(words[6]),
    }


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 90) % 180 - 90)


def assert_defocus(found_u, found_v, truth_u, truth_v, angle=None, truth_angle=None):
    assert abs(found_u - truth_u) <= TOLERANCE * truth_u, (found_u, truth_u)
    assert abs(found_v - truth_v) <= TOLERANCE * truth_v, (found_v, truth_v)
    if angle is not None and truth_u - truth_v >= 1000:
        assert angle_error(angle, truth_angle) <= 15, (angle, truth_angle)


def run_standin(answers: str, argv=()) -> tuple[int, str]:
    """``main`` in-process, answers on its stdin; returns the exit status and the log."""
    out = io.StringIO()
    code = standin.main(list(argv), stdin=io.StringIO(answers), stdout=out,
                        timeout=ESTIMATE_TIMEOUT)
    return code, out.getvalue()


# --------------------------------------------------------------------------------------------
# The protocol and the files, without the estimator
# --------------------------------------------------------------------------------------------


def test_reads_the_answers_relion_writes(tmp_path):
    mic = write_micrograph(tmp_path / "m.mrc", 128, 1.4, 20000, 19000, 0)
    phase = (0.0, math.pi, math.radians(10))
    echoed: list[str] = []
    request = standin.read_interactive(
        iter(relion_answers(str(mic), "m.ctf", phase=phase).splitlines()), echoed.append,
        amplitude_spectrum_input=False)
    assert request.input_path == str(mic) and request.output_path == "m.ctf"
    assert (request.pixel_size, request.voltage, request.cs, request.amplitude_contrast) == (
        1.4, 300, 2.7, 0.1)
    assert (request.box_size, request.min_resolution, request.max_resolution) == (256, 30, 5)
    assert (request.min_defocus, request.max_defocus, request.defocus_step) == (5000, 50000, 500)
    assert request.astigmatism_tolerance == 100 and not request.exhaustive_search
    assert request.find_phase_shift and request.max_phase_shift == pytest.approx(math.pi)
    assert any(line.startswith("Find additional phase shift?") for line in echoed)


def test_reads_old_school_ctffind4_lines(tmp_path):
    mic = write_micrograph(tmp_path / "m.mrc", 128, 1.4, 20000, 19000, 0)
    text = f"{mic}\nm.ctf\n2.7, 300, 0.1, 10000, 1.4\n512, 30, 5, 5000, 50000, 500, 0\n 0  1\n 0, 0, 3.15, 0.2\n"
    request = standin.read_old_school(iter(text.splitlines()), lambda line: None,
                                      ctffind4_lines=True, amplitude_spectrum_input=False)
    assert request.pixel_size == pytest.approx(1.4) and request.box_size == 512
    assert request.astigmatism_tolerance is None  # dAst 0: no restraint, as CTFFIND reads it
    assert not request.find_phase_shift and not request.input_is_movie


@pytest.mark.parametrize(
    ("index", "answer", "message"),
    [  # answers: 0 image, 1 output, 2 pixel, ..., 8 max. res., 12 astigmatism known, 17 expert
        (12, "yes", "known astigmatism is not supported"),
        (17, "yes", "expert options are not supported"),
        (2, "fast", "'fast' is not a number"),
        (8, "30", "minimum resolution (30.0 Å) must be above maximum resolution (30.0 Å)"),
        (10, None, "stdin ended before the answer to 'Maximum defocus'"),
    ],
)
def test_refuses_what_it_cannot_do(tmp_path, index, answer, message):
    mic = write_micrograph(tmp_path / "m.mrc", 128, 1.4, 20000, 19000, 0)
    lines = relion_answers(str(mic), str(tmp_path / "m.ctf")).splitlines()
    if answer is None:
        del lines[index:]
    else:
        lines[index] = answer
    code, log = run_standin("\n".join(lines) + "\n")
    assert code == 1
    assert "Error:" in log and message in log
    assert not (tmp_path / "m.txt").exists()


def test_summary_is_what_relion_reads():
    request = standin.CtffindRequest(
        input_path="Movies/a_PS.mrc", output_path="a_PS.ctf", pixel_size=1.399, voltage=300,
        cs=2.7, amplitude_contrast=0.1, box_size=512, min_resolution=30, max_resolution=5,
        min_defocus=5000, max_defocus=50000, defocus_step=500)
    fit = standin.CtfFit(defocus_1=20500.5, defocus_2=19500.25, azimuth=-45.5, phase_shift=0.0,
                         score=0.9, fit_resolution=4.5, pixel_size=1.399)
    import datetime

    text = standin.format_summary(request, fit, datetime.datetime(2026, 1, 2, 3, 4, 5))
    path = Path(standin.summary_path("a_PS.ctf"))
    assert path == Path("a_PS.txt")
    first = text.splitlines()[0]
    assert "relion-zo-ctffind-aspire" in first and "ASPIRE" in first and "not CTFFIND" in first
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        summary = Path(folder) / "a.txt"
        summary.write_text(text)
        values = read_like_relion(summary)
    assert values == {"angpix": 1.399, "kv": 300.0, "cs": 2.7, "q0": 0.1,
                      "defocus_u": 20500.5, "defocus_v": 19500.25, "angle": -45.5, "phase": 0.0,
                      "cc": 0.9, "maxres": 4.5}
    log = "\n".join(standin.format_results(request, fit))
    summary_line = next(line for line in log.splitlines() if "Summary of results" in line)
    assert summary_line.split()[-1] == "a_PS.txt"  # RELION takes the last word


def test_finds_the_aspire_interpreter(tmp_path):
    assert standin.aspire_python({"RELION_ZO_ASPIRE_PYTHON": "/x/python"}) == "/x/python"
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert standin.aspire_python({"RELION_ZO_ASPIRE_VENV": str(venv)}) == str(venv / "bin/python")
    data = tmp_path / "data"
    (data / "relion_zo" / "aspire-venv" / "bin").mkdir(parents=True)
    (data / "relion_zo" / "aspire-venv" / "bin" / "python").touch()
    assert standin.aspire_python({"XDG_DATA_HOME": str(data)}) == str(
        data / "relion_zo/aspire-venv/bin/python")


# --------------------------------------------------------------------------------------------
# The estimate, against the truth
# --------------------------------------------------------------------------------------------

TRUTHS = [  # defocus U, V (Å), azimuth (degrees)
    (10500.0, 9500.0, 30.0),
    (20500.0, 19500.0, -20.0),
    (31000.0, 29000.0, -60.0),
]


@pytest.mark.parametrize(("du", "dv", "angle"), TRUTHS)
def test_estimates_known_defocus(tmp_path, du, dv, angle):
    mic = write_micrograph(tmp_path / "mic.mrc", 768, 1.4, du, dv, angle, seed=int(du))
    out = tmp_path / "mic.ctf"
    code, log = run_standin(relion_answers(str(mic), str(out)))
    assert code == 0, log
    assert "ASPIRE CTF estimation speaking CTFFIND 4.1's protocol" in log
    found = read_like_relion(tmp_path / "mic.txt")
    assert_defocus(found["defocus_u"], found["defocus_v"], du, dv, found["angle"], angle)
    assert 0 < found["cc"] <= 1 and 2.8 <= found["maxres"] < 30
    with mrcfile.open(out) as diagnostic:
        assert diagnostic.data.shape == (256, 256)
    assert (tmp_path / "mic_avrot.txt").read_text().count("\n") == 6 + 5


def test_estimates_phase_shift(tmp_path):
    """A phase plate's 90 degrees, found on RELION's grid of phases (here 30 degrees apart)."""
    mic = write_micrograph(tmp_path / "pp.mrc", 768, 1.4, 15000, 14600, 20, seed=4,
                           phase=math.pi / 2)
    answers = relion_answers(str(mic), str(tmp_path / "pp.ctf"), dfmin=10000, dfmax=20000,
                             phase=(0.0, math.pi, math.radians(30)))
    code, log = run_standin(answers)
    assert code == 0, log
    assert "Additional phase shift" in log
    found = read_like_relion(tmp_path / "pp.txt")
    assert_defocus(found["defocus_u"], found["defocus_v"], 15000, 14600)
    assert abs(math.degrees(found["phase"]) - 90) <= 15


# --------------------------------------------------------------------------------------------
# RELION's CtfFind job with this program as its ctffind
# --------------------------------------------------------------------------------------------


def _relion_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RELION_SHELL", None)  # csh, as RELION runs CTFFIND by default
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=_relion_env(), capture_output=True, text=True,
                          timeout=RELION_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _ctffind_job(project: Path, star: str, extra=()) -> list[str]:
    """relion_run_ctffind as RELION 3.1's CtfFind job writes it (pipeline_jobs.cpp,
    getCommandsCtffindJob) with CTFFIND-4.1 chosen and exhaustive search off."""
    assert PROGRAM, "relion-zo-ctffind-aspire is not installed: run scripts/install-deps.sh"
    assert shutil.which("csh"), "csh is not installed: run scripts/install-deps.sh"
    (project / "CtfFind" / "job003").mkdir(parents=True)
    return ["relion_run_ctffind", "--i", star, "--o", "CtfFind/job003/", "--Box", "256",
            "--ResMin", "30", "--ResMax", "5", "--dFMin", "5000", "--dFMax", "50000", "--FStep",
            "500", "--dAst", "100", "--ctffind_exe", PROGRAM, "--ctfWin", "-1", "--is_ctffind4",
            "--fast_search", *extra]


OPTICS = ("\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
          "_rln{pixel} #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\n"
          "opticsGroup1 1 {apix} 300.0 2.7 0.1\n\n")


def test_relion_ctffind_job_fills_micrographs_ctf_star(tmp_path):
    truths = {"Micrographs/a.mrc": TRUTHS[0], "Micrographs/b.mrc": TRUTHS[2]}
    for i, (name, (du, dv, angle)) in enumerate(truths.items()):
        write_micrograph(tmp_path / name, 768, 1.4, du, dv, angle, seed=10 + i)
    (tmp_path / "micrographs.star").write_text(
        OPTICS.format(pixel="MicrographPixelSize", apix=1.4)
        + "\n# version 30001\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n"
        "_rlnOpticsGroup #2\n" + "".join(f"{name} 1\n" for name in truths))
    _run(_ctffind_job(tmp_path, "micrographs.star"), tmp_path)
    table = starfile.read(tmp_path / "CtfFind/job003/micrographs_ctf.star")["micrographs"]
    assert sorted(table["rlnMicrographName"]) == sorted(truths)
    for row in table.itertuples():
        du, dv, angle = truths[row.rlnMicrographName]
        assert_defocus(row.rlnDefocusU, row.rlnDefocusV, du, dv, row.rlnDefocusAngle, angle)
        assert row.rlnCtfImage.endswith(".ctf:mrc") and 0 < row.rlnCtfFigureOfMerit <= 1
    log = (tmp_path / "CtfFind/job003/Micrographs/a_ctffind4.log").read_text()
    assert "relion-zo-ctffind-aspire" in log and "Summary of results" in log


def test_relion_ctffind_job_uses_motioncorr_power_spectra(tmp_path):
    """RELION's own MotionCorr saves power spectra (``--grouping_for_ps``, as relion_it asks for
    with CTFFIND); CtfFind with --use_given_ps hands them to ctffind as amplitude spectra."""
    du, dv, angle = 20500.0, 19500.0, 45.0
    write_movie(tmp_path / "Movies" / "mov.mrc", 1024, 1.0, du, dv, angle, seed=5)
    (tmp_path / "movies.star").write_text(
        OPTICS.format(pixel="MicrographOriginalPixelSize", apix=1.0)
        + "\n# version 30001\n\ndata_movies\n\nloop_\n_rlnMicrographMovieName #1\n"
        "_rlnOpticsGroup #2\nMovies/mov.mrc 1\n")
    (tmp_path / "MotionCorr" / "job002").mkdir(parents=True)
    _run(["relion_run_motioncorr", "--i", "movies.star", "--o", "MotionCorr/job002/",
          "--first_frame_sum", "1", "--last_frame_sum", "-1", "--use_own", "--j", "1",
          "--bin_factor", "1", "--bfactor", "150", "--dose_per_frame", "1", "--preexposure",
          "0", "--patch_x", "1", "--patch_y", "1", "--dose_weighting", "--grouping_for_ps", "4"],
         tmp_path)
    spectrum = tmp_path / "MotionCorr/job002/Movies/mov_PS.mrc"
    with mrcfile.open(spectrum) as mrc:
        assert mrc.data.shape == (512, 512) and mrc.voxel_size.x > 1.39  # cropped to 1.4 Å
    _run(_ctffind_job(tmp_path, "MotionCorr/job002/corrected_micrographs.star",
                      ["--use_given_ps"]), tmp_path)
    table = starfile.read(tmp_path / "CtfFind/job003/micrographs_ctf.star")["micrographs"]
    assert list(table["rlnMicrographName"]) == ["MotionCorr/job002/Movies/mov.mrc"]
    row = next(table.itertuples())
    assert_defocus(row.rlnDefocusU, row.rlnDefocusV, du, dv, row.rlnDefocusAngle, angle)
    log = (tmp_path / "CtfFind/job003/Movies/mov_PS_ctffind4.log").read_text()
    assert "--amplitude-spectrum-input" in (
        tmp_path / "CtfFind/job003/Movies/mov_PS_ctffind4.com").read_text()
    assert "Size of amplitude spectrum to compute [512]" in log
