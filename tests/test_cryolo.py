"""crYOLO picking: relion_zo's External job program (relion_it/cryolo_job.py) and the ASPIRE
APPLE stand-in for crYOLO's cryolo_predict.py (devstack/cryolo_standin.py).

The job program's file handling is pure logic, tested with a fake crYOLO that writes crYOLO's
STAR output; the stand-in runs ASPIRE's APPLE for real on synthetic micrographs of known particle
positions; tests/test_pipeline.py-style runs through RELION are in test_cryolo_run below."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_zo.devstack import cryolo_standin, particles
from relion_zo.relion_it import cryolo_job
from relion_zo.relion_it import pipeliner as pl

MICS = "CtfFind/job003/micrographs_ctf.star"
JOB = "External/job004/"


def _project(tmp_path: Path, names: list[str]) -> Path:
    rows = "".join(f"MotionCorr/job002/{name} CtfFind/job003/{name}.ctf:mrc\n" for name in names)
    (tmp_path / "CtfFind" / "job003").mkdir(parents=True)
    (tmp_path / MICS).write_text("\n# version 30001\n\ndata_micrographs\n\nloop_\n"
                                 "_rlnMicrographName #1\n_rlnCtfImage #2\n" + rows + "\n")
    for name in names:
        path = tmp_path / "MotionCorr" / "job002" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"micrograph")
    return tmp_path


class FakeCryolo:
    """Writes crYOLO's STAR output: ``picks[i]`` particles for the i-th micrograph it is given
    (none and no file for 0), and records each call."""

    def __init__(self, picks: list[int]):
        self.picks, self.calls = list(picks), []

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        inputs = Path(argv[argv.index("-i") + 1])
        star = Path(argv[argv.index("-o") + 1]) / "STAR"
        star.mkdir(parents=True, exist_ok=True)
        assert json.loads(Path(argv[argv.index("--conf") + 1]).read_text())["model"][
            "anchors"] == [60, 60]
        for mic in sorted(inputs.iterdir()):
            count = self.picks.pop(0)
            if count:
                rows = "".join(f"{10 * i + 5} {20 * i + 7} 0 0.{i + 1}\n" for i in range(count))
                (star / f"{mic.stem}.star").write_text(
                    "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnClassNumber #3\n"
                    "_rlnAutopickFigureOfMerit #4\n" + rows)
        return subprocess.CompletedProcess(argv, 0)


def _pick(project, fake):
    return cryolo_job.pick(project, JOB, MICS, box_size=60, threshold=0.3, cryolo="cryolo",
                           weights="/models/gmodel.h5", gpu="0", run=fake)


def test_picks_become_relion_coordinates_and_a_summary_as_autopick_writes_them(tmp_path):
    names = ["Movies/GridSquare_1/Data/m1.mrc", "Movies/GridSquare_2/Data/m1.mrc"]
    project = _project(tmp_path, names)
    fake = FakeCryolo([3, 0])
    assert _pick(project, fake) == 2
    first = project / JOB / "Movies/GridSquare_1/Data/m1_autopick.star"
    xs = pl.star_column(first, "", "_rlnCoordinateX")
    assert [float(x) for x in xs] == [5.0, 15.0, 25.0]
    assert pl.star_column(first, "", "_rlnAutopickFigureOfMerit") == ["0.1", "0.2", "0.3"]
    # the same file name in two folders: each micrograph gets its own picks
    second = project / JOB / "Movies/GridSquare_2/Data/m1_autopick.star"
    assert second.exists() and pl.star_count(second, "") == 0
    summary = project / JOB / "summary.star"
    assert pl.star_column(summary, "", "_rlnGroupNrParticles") == ["3", "0"]
    assert (project / JOB / cryolo_job.COORDS_SUFFIX_FILE).read_text() == MICS + "\n"
    assert pl.star_column(project / JOB / "RELION_OUTPUT_NODES.star", "output_nodes",
                          "_rlnPipeLineNodeName") == [JOB + cryolo_job.COORDS_SUFFIX_FILE]
    assert not list((project / JOB / "cryolo_input").iterdir())  # links removed


def test_a_second_run_picks_only_the_new_micrographs(tmp_path):
    names = ["Movies/a.mrc"]
    project = _project(tmp_path, names)
    _pick(project, FakeCryolo([2]))
    _project_more = project / MICS
    _project_more.write_text(_project_more.read_text().rstrip() +
                             "\nMotionCorr/job002/Movies/b.mrc CtfFind/job003/b.ctf:mrc\n\n")
    (project / "MotionCorr/job002/Movies/b.mrc").write_bytes(b"micrograph")
    fake = FakeCryolo([4])
    assert _pick(project, fake) == 1
    assert len(fake.calls) == 1
    assert pl.star_column(project / JOB / "summary.star", "", "_rlnGroupNrParticles") == [
        "2", "4"]
    fake = FakeCryolo([])
    assert _pick(project, fake) == 0 and fake.calls == []  # nothing new: crYOLO is not run


def test_a_failing_cryolo_fails_the_job_with_one_line(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path, ["Movies/a.mrc"])
    monkeypatch.chdir(project)
    false = shutil.which("false")
    code = cryolo_job.main(["--o", JOB, "--in_mics", MICS, "--box_size", "60",
                            "--threshold", "0.3", "--cryolo", false, "--weights", "/m.h5"])
    assert code == 1
    assert (project / JOB / cryolo_job.EXIT_FAILURE).exists()
    assert not (project / JOB / cryolo_job.EXIT_SUCCESS).exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"relion-zo-cryolo-job: crYOLO ({false}) exited with status 1"]


@pytest.mark.parametrize("bad", ["/etc/passwd", "../../x.mrc", "x.mrc"])
def test_micrographs_outside_a_job_folder_are_refused(tmp_path, bad):
    project = _project(tmp_path, [])
    (project / MICS).write_text("data_micrographs\n\nloop_\n_rlnMicrographName #1\n" + bad + "\n")
    with pytest.raises(cryolo_job.CryoloJobError, match="not a micrograph of a job"):
        _pick(project, FakeCryolo([1]))


def test_apples_settings_scale_with_the_micrograph():
    # APPLE's own defaults are for 4,000 pixels: 3 % and 30 % of its query windows
    big = cryolo_standin.apple_settings(60, 4000)
    assert (big["query_image_size"], big["container_size"]) == (40, 450)
    assert (big["tau1"], big["tau2"]) == (1200, 12000)
    small = cryolo_standin.apple_settings(60, 1004)
    assert (small["tau1"], small["tau2"], small["container_size"]) == (75, 756, 113)
    with pytest.raises(cryolo_standin.StandinError, match="too small"):
        cryolo_standin.apple_settings(5, 1004)


def test_the_standin_speaks_cryolos_protocol_and_finds_the_particles(tmp_path):
    """APPLE for real on two synthetic micrographs of known particle positions: picks near
    the particles, not noise; crYOLO's STAR output, saying it is not crYOLO."""
    truths = particles.write_particle_movies(tmp_path / "movies", 2, seed=5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for number, truth in enumerate(truths):
        with mrcfile.open(truth.path) as mrc:
            # the frames' sum: a drift of 3-6 pixels in all blurs the particles a little
            micrograph = mrc.data.astype(np.float32).sum(axis=0)
        with mrcfile.new(inputs / f"mic{number}.mrc") as mrc:
            mrc.set_data(micrograph)
            mrc.voxel_size = truth.angpix
    weights = tmp_path / "gmodel.h5"
    weights.write_bytes(b"model")
    config = tmp_path / "config.json"
    box = round(particles.particle_diameter() / truths[0].angpix)
    config.write_text(json.dumps({"model": {"anchors": [box, box]}}))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "relion_zo.devstack.cryolo_standin", "--conf", str(config),
         "-i", str(inputs), "-o", str(out), "--weights", str(weights), "--threshold", "0.3"],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    for number, truth in enumerate(truths):
        star = out / "STAR" / f"mic{number}.star"
        assert star.read_text().startswith("# relion-zo-cryolo-apple: ASPIRE's APPLE picker, "
                                           "not crYOLO")
        picks = np.array([[float(x), float(y)] for x, y in zip(
            pl.star_column(star, "", "_rlnCoordinateX"),
            pl.star_column(star, "", "_rlnCoordinateY"), strict=True)])
        true = np.array(truth.coordinates)
        distance = np.sqrt(((picks[:, None] - true[None]) ** 2).sum(-1))
        near = distance.min(axis=1) < box / 4  # a pick on a particle
        found = distance.min(axis=0) < box / 4  # a particle picked
        assert near.mean() > 0.9, (near.mean(), len(picks))
        assert found.mean() > 0.5, (found.mean(), len(true))


def test_the_standin_refuses_what_cryolo_would(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"anchors": [60, 60]}}))
    base = ["--conf", str(config), "-i", str(tmp_path), "-o", str(tmp_path / "out")]
    assert cryolo_standin.main(base + ["--weights", str(tmp_path / "missing.h5")]) == 1
    (tmp_path / "m.h5").write_bytes(b"model")
    assert cryolo_standin.main(base + ["--weights", str(tmp_path / "m.h5"),
                                       "--threshold", "2"]) == 1
    config.write_text("{}")
    assert cryolo_standin.main(base + ["--weights", str(tmp_path / "m.h5")]) == 1


def test_cryolo_picks_through_relions_external_job(processing_engine, engine, tmp_path,
                                                   stack_settings, live_visits):
    """A job that asks for crYOLO on a site that names one (here relion-zo-cryolo-apple):
    Import, MotionCorr, CtfFind, crYOLO as RELION's External job under relion_it's
    ``autopick_job`` name, and Extract reading its coordinates, to success."""
    from runs import site_config

    from relion_zo.runner import run_job

    tools = {name: shutil.which(name) for name in
             ("relion-zo-ctffind-aspire", "relion-zo-cryolo-apple")}
    assert all(tools.values()), "scripts/install-deps.sh installs both stand-ins"
    weights = tmp_path / "gmodel_phosnet.h5"
    weights.write_bytes(b"crYOLO's general model goes here")
    site = site_config(tmp_path, stack_settings, idle_seconds=0, executables={
        "relion_pipeliner": "relion_pipeliner", "ctffind": tools["relion-zo-ctffind-aspire"],
        "cryolo": tools["relion-zo-cryolo-apple"]}, cryolo_weights=str(weights))
    live = live_visits(site, movies=0)
    truths = particles.write_particle_movies(live.raw, 2, seed=3)
    pjid = live.start(angpix="2.0", motioncor_doseperframe="5",
                      stop_after_motion_correction="false", stop_after_ctf_estimation="false",
                      autopick_do_cryolo="1", autopick_LoG_diam_min="90",
                      autopick_LoG_diam_max="120", do_class2d="0", do_class3d="0")
    outcome = run_job(pjid, engine=processing_engine, config=site)
    assert outcome.state == "success", outcome.message
    project = live.project(pjid)
    submitted = pl.read_submitted(project)
    assert list(submitted) == ["import_job", "motioncorr_job", "ctffind_job", "autopick_job",
                               "extract_job"]
    cryolo = submitted["autopick_job"]
    assert cryolo.startswith("External/") and pl.exit_state(project, cryolo) == "success"
    picked = [int(n) for n in pl.star_column(project / cryolo / "summary.star", "",
                                             "_rlnGroupNrParticles")]
    true = sum(len(t.coordinates) for t in truths)
    assert len(picked) == 2 and 0.5 * true < sum(picked) <= 1.1 * true, (picked, true)
    assert outcome.message == (f"Import 2, MotionCorr 2/2, CtfFind 2/2, AutoPick (crYOLO) 2/2 "
                               f"({sum(picked):,} particles)")
    extracted = project / submitted["extract_job"] / "particles.star"
    assert pl.star_count(extracted, "particles") == sum(picked)
    # RELION's pipeline has the crYOLO job's coordinates as its output node
    nodes = pl.star_column(project / pl.PIPELINE_STAR, "pipeline_nodes", "_rlnPipeLineNodeName")
    assert f"{cryolo}coords_suffix_autopick.star" in nodes
