"""Synthetic particle movies (relion_zo.devstack.particles) checked with RELION 3.1's own programs.

One 1024² movie of 100 particles goes through RELION's motion correction, LoG picker and
extraction with the command lines the pipeliner generates for relion_it's jobs; its projections
and CTF are compared with ``relion_project``. Each RELION call has a time limit; none skips when
RELION is missing (the call fails).
"""

from __future__ import annotations

import math
import shlex
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from relion_zo.devstack import particles

TIMEOUT = 120  # seconds for any one RELION program; each takes about a second here
ANGPIX = 2.0


def _run(command: str, cwd: Path) -> None:
    """Run a RELION command line (no shell); fail with its output if it fails."""
    args = shlex.split(command)
    done = subprocess.run(
        args, check=False, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _loop(path: Path, block: str) -> dict:
    """Columns of one STAR block as lists (starfile reads blocks into DataFrames)."""
    data = starfile.read(path, always_dict=True)
    return data[block].to_dict("list")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, particles.MovieTruth]:
    """A RELION project folder with one movie in Movies/, imported as the pipeliner imports."""
    root = tmp_path_factory.mktemp("particles")
    (truth,) = particles.write_particle_movies(root / "Movies", 1, seed=3, angpix=ANGPIX)
    (root / "Import" / "job001").mkdir(parents=True)
    _run(
        f"relion_import --do_movies --optics_group_name opticsGroup1 --angpix {ANGPIX} --kV 300 "
        "--Cs 2.7 --Q0 0.1 --beamtilt_x 0 --beamtilt_y 0 --i Movies/*.mrc --odir Import/job001/ "
        "--ofile movies.star",
        root,
    )
    return root, truth


@pytest.fixture(scope="module")
def corrected(project) -> Path:
    """RELION's own motion correction, as the pipeliner runs a relion_it MotionCorr job with
    power spectra (dose 5 e/Å² per frame, so ``--grouping_for_ps 1``), one patch."""
    root, _ = project
    (root / "MotionCorr" / "job002").mkdir(parents=True)
    _run(
        (
            "relion_run_motioncorr --i Import/job001/movies.star --o MotionCorr/job002/ "
            "--first_frame_sum 1 --last_frame_sum -1 --use_own --j 2 --bin_factor 1 "
            "--bfactor 150 --dose_per_frame 5 --preexposure 0 --patch_x 1 --patch_y 1 "
            "--dose_weighting --grouping_for_ps 1"
        ),
        root,
    )
    return root / "MotionCorr" / "job002"


def test_movie_is_an_mrc_stack_with_its_truth(tmp_path):
    size, frames = 256, 4
    (truth,) = particles.write_particle_movies(
        tmp_path,
        1,
        seed=7,
        size=size,
        frames=frames,
        particles_per_movie=5,
        total_drift=(2.0, 2.0),
    )
    with mrcfile.open(truth.path, permissive=False) as mrc:
        assert mrc.data.shape == (frames, size, size)
        assert mrc.data.dtype == np.float32
        assert mrc.is_image_stack()
        assert mrc.voxel_size.x == pytest.approx(ANGPIX)
        assert (mrc.data >= 0).all() and mrc.data.mean() == pytest.approx(5.0 * ANGPIX**2, 0.1)
    assert len(truth.coordinates) == len(truth.angles) == 5
    assert len(truth.drift) == frames and truth.drift[0] == (0.0, 0.0)
    assert math.hypot(*truth.total_drift) == pytest.approx(2.0, abs=1e-3)
    assert 12000 <= (truth.defocus_u + truth.defocus_v) / 2 <= 25000
    diameter = particles.particle_diameter() / ANGPIX
    xy = np.array(truth.coordinates)
    assert (xy >= diameter / 2).all() and (xy <= size - 1 - diameter / 2).all()
    gaps = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert gaps[np.triu_indices(len(xy), 1)].min() >= diameter
    # the truth survives JSON, and the same seed writes the same movie
    assert particles.read_truth_json(particles.write_truth_json(tmp_path / "t.json", [truth])) == [
        truth
    ]
    (again,) = particles.write_particle_movies(
        tmp_path / "again",
        1,
        seed=7,
        size=size,
        frames=frames,
        particles_per_movie=5,
        total_drift=(2.0, 2.0),
    )
    assert again.coordinates == truth.coordinates and again.defocus_u == truth.defocus_u
    assert (mrcfile.read(again.path) == mrcfile.read(truth.path)).all()


def test_too_many_particles_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fit"):
        particles.write_particle_movies(tmp_path, 1, size=256, particles_per_movie=50)


@pytest.mark.relion
def test_projection_and_ctf_follow_relion_project(tmp_path):
    """Our Euler angles, projection and CTF are RELION's: relion_project of the map written by
    write_reference_volume matches, and a wrong angle convention or astigmatism angle does not."""
    box = 64
    cases = [((30.0, 60.0, -45.0), (20000.0, 10000.0, 30.0)), ((200.0, 120.0, 80.0), None)]
    rows = "\n".join(
        f"{r} {t} {p} {ctf[0] if ctf else 0} {ctf[1] if ctf else 0} {ctf[2] if ctf else 0} 1"
        for (r, t, p), ctf in cases
    )
    star = f"""
data_optics
loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
_rlnVoltage #6
_rlnSphericalAberration #7
_rlnAmplitudeContrast #8
opticsGroup1 1 {ANGPIX} {box} 2 300 2.7 0.1

data_particles
loop_
_rlnAngleRot #1
_rlnAngleTilt #2
_rlnAnglePsi #3
_rlnDefocusU #4
_rlnDefocusV #5
_rlnDefocusAngle #6
_rlnOpticsGroup #7
"""
    (tmp_path / "one.star").write_text(star + rows.splitlines()[0] + "\n")
    (tmp_path / "two.star").write_text(star + rows.splitlines()[1] + "\n")

    def cc(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    # orientation: the whole map, no CTF
    particles.write_reference_volume(tmp_path / "map.mrc", box, ANGPIX)
    _run(f"relion_project --i map.mrc --o proj --ang two.star --angpix {ANGPIX}", tmp_path)
    theirs = mrcfile.read(tmp_path / "proj.mrcs").reshape(box, box)
    (rot, tilt, psi), _ = cases[1]
    ours = particles.project(rot, tilt, psi, box, ANGPIX)
    assert cc(ours, theirs) > 0.999
    assert cc(particles.project(-psi, tilt, -rot, box, ANGPIX), theirs) < 0.95  # transposed

    # CTF: a small dot shows the point spread function, strongly astigmatic
    dot = (particles.Blob(0.0, 0.0, 0.0, 3.0, 1.0),)
    particles.write_reference_volume(tmp_path / "dot.mrc", box, ANGPIX, dot)
    _run(f"relion_project --i dot.mrc --o psf --ang one.star --angpix {ANGPIX} --ctf", tmp_path)
    theirs = mrcfile.read(tmp_path / "psf.mrcs").reshape(box, box)
    (rot, tilt, psi), (u, v, angle) = cases[0]
    image = np.fft.rfft2(particles.project(rot, tilt, psi, box, ANGPIX, dot))

    def with_ctf(u, v, angle):
        return np.fft.irfft2(image * particles.ctf((box, box), ANGPIX, u, v, angle), s=(box, box))

    assert cc(with_ctf(u, v, angle), theirs) > 0.999
    assert cc(with_ctf(u, v, -angle), theirs) < 0.8
    assert cc(with_ctf(v, u, angle), theirs) < 0.8


@pytest.mark.relion
def test_relion_motioncorr_recovers_the_drift(project, corrected):
    _, truth = project
    shifts = _loop(corrected / "Movies" / "movie_0001.star", "global_shift")
    found = np.column_stack([shifts["rlnMicrographShiftX"], shifts["rlnMicrographShiftY"]])
    # RELION writes the shift that aligns each frame to the first: minus the specimen's drift
    injected = -np.array(truth.drift)
    assert found.shape == injected.shape
    assert np.hypot(*(found[-1] - injected[-1])) < 1.0, (found[-1], injected[-1])
    assert np.hypot(*(found - injected).T).max() < 1.0
    assert (corrected / "Movies" / "movie_0001_PS.mrc").exists()
    with mrcfile.open(corrected / "Movies" / "movie_0001.mrc") as mrc:
        assert mrc.data.shape == (truth.size, truth.size)


@pytest.mark.relion
def test_relion_log_picker_finds_the_particles(project, corrected):
    root, truth = project
    (root / "AutoPick" / "job003").mkdir(parents=True)
    _run(
        (
            "relion_autopick --i MotionCorr/job002/corrected_micrographs.star --odir "
            "AutoPick/job003/ --pickname autopick --LoG --LoG_diam_min 90 --LoG_diam_max "
            "120 --shrink 0 --lowpass 20 --LoG_adjust_threshold 0"
        ),
        root,
    )
    picks = _loop(root / "AutoPick/job003/Movies/movie_0001_autopick.star", "")
    found = np.column_stack([picks["rlnCoordinateX"], picks["rlnCoordinateY"]])
    true = np.array(truth.coordinates)
    distance = np.hypot(*(true[:, None] - found[None]).transpose(2, 0, 1)).min(axis=1)
    quarter = particles.particle_diameter() / ANGPIX / 4
    recall = (distance <= quarter).mean()
    assert recall >= 0.7, f"LoG found {recall:.0%} of {len(true)} particles ({len(found)} picks)"


@pytest.mark.relion
def test_relion_extracts_the_true_particles_white(project, corrected):
    """The truth STAR files are ones RELION reads: Extract takes the true CTF and coordinates and,
    inverting contrast as relion_it's Extract does, makes the (dark) particles white."""
    root, truth = project
    names = ["MotionCorr/job002/Movies/movie_0001.mrc"]
    particles.write_micrographs_star(root / "Truth" / "micrographs_ctf.star", [truth], names)
    particles.write_coordinate_stars(
        root / "Truth", [truth], names, micrographs_star="Truth/micrographs_ctf.star"
    )
    particles.write_truth_star(root / "Truth" / "particles.star", [truth], names)
    (root / "Extract" / "job004").mkdir(parents=True)
    _run(
        (
            "relion_preprocess --i Truth/micrographs_ctf.star --coord_dir Truth/ "
            "--coord_suffix _truth.star --part_star Extract/job004/particles.star "
            "--part_dir Extract/job004/ --extract --extract_size 80 --norm --bg_radius 30 "
            "--white_dust -1 --black_dust -1 --invert_contrast"
        ),
        root,
    )
    extracted = _loop(root / "Extract/job004/particles.star", "particles")
    assert len(extracted["rlnImageName"]) == len(truth.coordinates)
    assert extracted["rlnDefocusU"][0] == pytest.approx(truth.defocus_u)
    stack = mrcfile.read(root / "Extract/job004/Movies/movie_0001.mrcs")
    mean = stack.mean(axis=0)  # random orientations: a round blob
    r = np.hypot(*np.mgrid[-40:40, -40:40])
    assert mean[r < 10].mean() > mean[r > 30].mean() + 0.3  # white particles, background 0
    truth_rows = _loop(root / "Truth" / "particles.star", "particles")
    assert truth_rows["rlnAngleTilt"] == pytest.approx([a[1] for a in truth.angles])


@pytest.mark.relion
def test_thon_rings_of_the_corrected_micrograph_give_the_true_defocus(project, corrected):
    """A CTF estimator can find the defocus: the rotational average of the power spectrum of
    RELION's corrected micrograph correlates best with the true defocus's CTF²."""
    _, truth = project
    image = mrcfile.read(corrected / "Movies" / "movie_0001.mrc").astype(np.float64)
    power = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    k = np.hypot(
        np.fft.fftfreq(image.shape[0], ANGPIX)[:, None], np.fft.rfftfreq(image.shape[1], ANGPIX)
    )
    bins = np.linspace(1 / 30, 1 / 6, 200)
    which = np.digitize(k, bins)
    inside = (which > 0) & (which < len(bins))
    sums = np.bincount(which[inside], power[inside], minlength=len(bins))[1:]
    counts = np.bincount(which[inside], minlength=len(bins))[1:]
    profile = np.log(sums / counts)
    centres = (bins[:-1] + bins[1:]) / 2
    profile -= np.polyval(np.polyfit(centres, profile, 4), centres)  # flatten the background
    lam = particles.electron_wavelength(300)
    candidates = np.arange(5000.0, 40000.0, 25.0)
    scores = []
    for df in candidates:
        chi = np.pi * lam * df * centres**2 - np.pi / 2 * 2.7e7 * lam**3 * centres**4
        model = np.sin(chi + math.asin(0.1)) ** 2
        scores.append(np.corrcoef(model, profile)[0, 1])
    best = candidates[int(np.argmax(scores))]
    mean = (truth.defocus_u + truth.defocus_v) / 2
    assert best == pytest.approx(mean, rel=0.02), (best, mean, max(scores))
