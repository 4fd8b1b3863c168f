"""Results into ISPyB: RELION's STAR files read (relion_zo.results, pure logic over files in
RELION 3.1's formats) and written by the job manager with the processing side's grants, each
row once however often the same results are recorded (real MariaDB, rows counted)."""

from __future__ import annotations

import json

import pytest
from ispyb.sqlalchemy import (
    CTF,
    CryoemInitialModel,
    MotionCorrection,
    Movie,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relion_zo import results
from relion_zo.manager import JobManager, Outcome

JOBS = {"import_job": "Import/job001/", "motioncorr_job": "MotionCorr/job002/",
        "ctffind_job": "CtfFind/job003/", "autopick_job": "AutoPick/job004/"}
STAR = "\n# version 30001\n\ndata_{block}\n\nloop_\n{labels}{rows}\n"


def _star(path, block, labels, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STAR.format(block=block, labels="".join(
        f"_rln{label} #{i}\n" for i, label in enumerate(labels, start=1)),
        rows="".join(" ".join(str(v) for v in row) + "\n" for row in rows)))


def make_project(root, movies=2, *, ctf=True, picks=True):
    """A project as RELION 3.1 leaves it after Import, MotionCorr, CtfFind and AutoPick."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    (root / "project").mkdir()
    project = root / "project"
    (project / "Movies").symlink_to(raw)
    names = [f"Movies/m{i}.mrc" for i in range(1, movies + 1)]
    for name in names:
        (project / name).write_bytes(b"movie")
    _star(project / "Import/job001/movies.star", "movies", ["MicrographMovieName"],
          [[n] for n in names])
    micrographs = [f"MotionCorr/job002/{n}" for n in names]
    _star(project / "MotionCorr/job002/corrected_micrographs.star", "micrographs",
          ["MicrographName", "MicrographMetadata", "AccumMotionTotal", "AccumMotionEarly",
           "AccumMotionLate"],
          [[m, m.replace(".mrc", ".star"), 4.5 + i, 0.5, 4.0 + i]
           for i, m in enumerate(micrographs)])
    for m in micrographs:
        meta = project / m.replace(".mrc", ".star")
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(
            "\n# version 30001\n\ndata_general\n\n_rlnImageSizeX 1024\n_rlnImageSizeY 1024\n"
            f"_rlnImageSizeZ 4\n_rlnMicrographMovieName {m.split('/', 2)[2]}\n"
            "_rlnMicrographDoseRate 5.000000\n_rlnMicrographStartFrame 1\n\n"
            "# version 30001\n\ndata_global_shift\n\nloop_\n_rlnMicrographFrameNumber #1\n"
            "_rlnMicrographShiftX #2\n_rlnMicrographShiftY #3\n1 0 0\n2 1 0.5\n3 2 1\n4 3 1.5\n\n")
    if ctf:
        _star(project / "CtfFind/job003/micrographs_ctf.star", "micrographs",
              ["MicrographName", "CtfImage", "DefocusU", "DefocusV", "DefocusAngle",
               "CtfFigureOfMerit", "CtfMaxResolution"],
              [[m, m.replace("MotionCorr/job002", "CtfFind/job003").replace(".mrc", ".ctf:mrc"),
                20000 + 100 * i, 19000 + 100 * i, 30.0, 0.85, 6.5]
               for i, m in enumerate(micrographs)])
    if picks:
        _star(project / "AutoPick/job004/summary.star", "", [
            "MicrographName", "AutopickFigureOfMerit", "GroupNrParticles"],
            [[m, 1.0, 100 + i] for i, m in enumerate(micrographs)])
    return project


def test_movies_are_read_from_relions_star_files(tmp_path):
    project = make_project(tmp_path)
    found = results.movies(project, JOBS, {"autopick_job": "LoG"})
    assert [m.number for m in found] == [1, 2]
    first = found[0]
    assert first.movie == str((tmp_path / "raw" / "m1.mrc").resolve())
    assert (first.frames, first.first_frame, first.last_frame) == (4, 1, 4)
    assert first.total_motion == 4.5 and first.average_motion_per_frame == 4.5 / 4
    assert first.drift[-1] == (3.0, 1.5)
    assert first.ctf.defocus == 19500 and first.ctf.astigmatism == 1000
    assert first.ctf.image == str(project / "CtfFind/job003/Movies/m1.ctf")
    assert [(p.picker, p.particles) for p in first.picks] == [("LoG", 100)]
    plot = results.drift_plot(tmp_path / "d.json", first.drift)
    assert json.loads(plot.read_text())["data"][0]["x"] == [0.0, 1.0, 2.0, 3.0]


def test_a_movie_without_ctf_or_picks_yet_is_read_without_them(tmp_path):
    project = make_project(tmp_path, ctf=False, picks=False)
    cache: dict = {}
    found = results.movies(project, JOBS, {"autopick_job": "LoG"}, cache)
    assert all(m.ctf is None and m.picks == () for m in found) and len(cache) == 2
    # metadata is not read again for a cached movie
    (project / "MotionCorr/job002/Movies/m1.star").unlink()
    assert len(results.movies(project, JOBS, {}, cache)) == 2


def _counts(engine) -> dict[str, int]:
    with Session(engine) as db:
        return {model.__tablename__: db.execute(select(func.count()).select_from(model)).scalar()
                for model in (Movie, MotionCorrection, CTF, ParticlePicker,
                              ParticleClassificationGroup, ParticleClassification,
                              CryoemInitialModel)}


def _job_results(project, dcid, movies, classifications=()):
    return results.JobResults(
        dcid=dcid, project=str(project), patches=(4, 4),
        search={"box": 512, "minres": 30, "maxres": 5, "defocus_min": 5000,
                "defocus_max": 50000, "defocus_step": 500, "amplitude_contrast": 0.1,
                "particle_diameter": 180},
        movies=tuple((m, results.MovieFiles()) for m in movies),
        classifications=tuple(classifications))


@pytest.fixture
def claimed(engine, processing_engine, site, live_visits):
    """A processing job of a live visit, its data collection and a claimed program."""
    from relion_zo import jobs

    live = live_visits(site, movies=1)
    pjid = live.start()
    manager = JobManager(processing_engine, site)
    program = manager.claim(pjid, command_line="test", environment="test")
    with Session(engine) as db:
        dcid = jobs.load_job(db, site, pjid).data_collection_id
    return manager, pjid, program, dcid


def test_each_result_is_written_once_however_often_it_is_recorded(tmp_path, engine,
                                                                   claimed):
    manager, pjid, program, dcid = claimed
    project = make_project(tmp_path)
    before = _counts(engine)
    found = results.movies(project, JOBS, {"autopick_job": "LoG"})
    classes = results.ClassificationResult(
        "Class2D/job007/", "2D", 1, 300, 3.0, "C1",
        tuple(results.ClassResult(n, f"{n}@{project}/Class2D/job007/run_it008_classes.mrcs",
                                  0.25, 9.0, 3.9, 24.0, 1.0) for n in (1, 2, 3, 4)))
    added = manager.record_results(program, _job_results(project, dcid, found, [(classes, 4)]))
    assert added == {"Movie": 2, "MotionCorrection": 2, "CTF": 2, "ParticlePicker": 2,
                     "ParticleClassificationGroup": 1, "ParticleClassification": 4}
    after = _counts(engine)
    assert {t: after[t] - before[t] for t in after} == {
        "Movie": 2, "MotionCorrection": 2, "CTF": 2, "ParticlePicker": 2,
        "ParticleClassificationGroup": 1, "ParticleClassification": 4, "CryoemInitialModel": 0}
    # the same results again (a pass that re-reads, a redelivered message): nothing added
    again = manager.record_results(program, _job_results(project, dcid, found,
                                                         [(classes, 4)]))
    assert not any(again.values()) and _counts(engine) == after
    # a resume is a new program of the same job: nothing added either
    manager.finish(program, Outcome("failed", "stopped here to be resumed"))
    resumed = manager.new_program(pjid, command_line="resume", environment="test")
    assert not any(manager.record_results(resumed, _job_results(
        project, dcid, found, [(classes, 4)])).values())
    # batch 1 classified again on more particles: its rows follow, none are added
    grown = results.ClassificationResult(
        classes.job, "2D", 1, 420, 3.0, "C1", tuple(
            results.ClassResult(c.number, c.image, 0.25, 8.0, 3.5, 20.0, 1.0)
            for c in classes.classes))
    manager.record_results(resumed, _job_results(project, dcid, [], [(grown, 4)]))
    assert _counts(engine) == after
    with Session(engine) as db:
        rows = db.execute(select(ParticleClassification.particlesPerClass,
                                 ParticleClassification.estimatedResolution).where(
            ParticleClassification.classImageFullPath.like(f"%{project}/Class2D/job007/%"))
        ).all()
    assert sorted(rows) == [(105, 20.0)] * 4


def test_status_summarises_a_jobs_results(tmp_path, engine, processing_engine, claimed, site,
                                          capsys):
    """``relion-zo status --job N``, with the processing side's grants: the numbers of what
    record_results wrote, in three statements."""
    from runs import write_site_file

    from relion_zo import summary
    from relion_zo.cli.main import main as cli

    manager, pjid, program, dcid = claimed
    project = make_project(tmp_path, movies=3)
    found = results.movies(project, JOBS, {"autopick_job": "LoG"})
    manager.record_results(program, _job_results(project, dcid, found))
    with Session(processing_engine) as db:
        numbers = summary.job_summary(db, pjid)
    assert (numbers.movies, numbers.ctf) == (3, 3)
    assert numbers.motion_mean == pytest.approx(5.5) and numbers.motion_p95 == 6.5
    assert (numbers.defocus_min, numbers.defocus_max) == (19500, 19700)
    assert numbers.ctf_resolution_median == 6.5
    assert numbers.particles == {"LoG": 100 + 101 + 102}
    assert (numbers.classes_2d, numbers.classes_3d) == (0, 0)

    site_file = write_site_file(site, tmp_path / "site.yaml")
    assert cli(["status", "--config", str(site_file), "--job", str(pjid), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)[0]["results"]
    assert shown["movies"] == 3 and shown["particles"] == {"LoG": 303}
    # the job's own raw folder (one movie written now): its movie is newer than any processed
    assert shown["lag_seconds"] is not None and shown["lag_seconds"] >= 0
    assert cli(["status", "--config", str(site_file), "--job", str(pjid)]) == 0
    text = capsys.readouterr().out
    assert "movies      3 motion-corrected; motion mean 5.50, 95th percentile 6.50" in text
    assert "particles   303 (LoG)" in text


def _png(path):
    """(width, height, pixels) of an 8-bit greyscale PNG, decoded here."""
    import struct
    import zlib

    import numpy as np

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 0)
    idat = b""
    position = 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"IDAT":
            idat += data[position + 8:position + 8 + length]
        position += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()  # no row filter
    return width, height, rows[:, 1:]


def test_pictures_are_pngs_of_the_micrograph_and_the_ctf_fit(tmp_path):
    import mrcfile
    import numpy as np

    from relion_zo import images

    ramp = np.add.outer(np.arange(1024), np.arange(1024)).astype(np.float32)
    with mrcfile.new(tmp_path / "m.mrc") as mrc:
        mrc.set_data(ramp)
    width, height, pixels = _png(images.snapshot(tmp_path / "m.mrc", tmp_path / "m.png"))
    assert (width, height) == (512, 512)
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255  # dark to light, as the ramp
    assert (np.diff(pixels[0].astype(int)) >= 0).all()
    with mrcfile.new(tmp_path / "d.ctf") as mrc:  # CTFFIND's diagnostic: an MRC stack
        mrc.set_data(np.stack([ramp[:256, :256], np.zeros((256, 256), np.float32)]))
    width, height, _ = _png(images.ctf_image(tmp_path / "d.ctf", tmp_path / "d.png"))
    assert (width, height) == (256, 256)
    with pytest.raises(ValueError):
        images.png_bytes(np.zeros((2, 2, 3), np.uint8))
    with mrcfile.new(tmp_path / "classes.mrcs") as mrc:  # RELION's 2D class averages
        mrc.set_data(np.stack([ramp[:48, :48], -ramp[:48, :48]]))
    width, height, pixels = _png(images.class_average(tmp_path / "classes.mrcs", 2,
                                                      tmp_path / "c2.png"))
    assert (width, height) == (96, 96) and pixels[0, 0] == 255  # the second, inverted
    flat = np.zeros((1024, 1024), np.float32)
    flat[0, 0] = 1  # so that the snapshot's contrast has a range: the rest is black
    with mrcfile.new(tmp_path / "flat.mrc") as mrc:
        mrc.set_data(flat)
    _, _, pixels = _png(images.picks(tmp_path / "flat.mrc", [(512.0, 256.0)], 40.0,
                                     tmp_path / "p.png"))
    ring = np.argwhere(pixels == 255)
    # a ring of radius 10 (20 pixels across at half size) around (256, 128) of the snapshot
    distances = np.hypot(ring[:, 0] - 128, ring[:, 1] - 256)
    assert len(ring) > 40 and abs(np.median(distances) - 10) < 1


def test_the_report_is_one_self_contained_page(tmp_path, engine, processing_engine, claimed,
                                               site, capsys):
    """``relion-zo report N``: made from ISPyB and the project, its plots and class averages
    embedded as PNG; no link to any other file."""
    import base64
    import re

    import mrcfile
    import numpy as np
    from runs import write_site_file

    from relion_zo.cli.main import main as cli

    manager, pjid, program, dcid = claimed
    project = make_project(site.data_roots[0] / "report", movies=3)
    for number in range(1, 4):  # the micrographs, for the throughput plot's times
        (project / f"MotionCorr/job002/Movies/m{number}.mrc").write_bytes(b"micrograph")
    stack = project / "Class2D/job007/run_it008_classes.mrcs"
    stack.parent.mkdir(parents=True)
    with mrcfile.new(stack) as mrc:
        mrc.set_data(np.random.default_rng(1).normal(size=(2, 32, 32)).astype(np.float32))
    classes = results.ClassificationResult("Class2D/job007/", "2D", 1, 300, 3.0, "C1", (
        results.ClassResult(1, f"1@{stack}", 0.7, 9.0, 3.9, 24.0, 1.0),
        results.ClassResult(2, f"2@{stack}", 0.3, 9.0, 3.9, 28.0, 1.0)))
    manager.record_results(program, _job_results(
        project, dcid, results.movies(project, JOBS, {"autopick_job": "LoG"}),
        [(classes, 2)]))
    manager.attach(program, project / "relion_it_options.py", "Input", 1)
    site_file = write_site_file(site, tmp_path / "site.yaml")
    out = tmp_path / "report.html"
    assert cli(["report", "--config", str(site_file), str(pjid), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert f"RELION processing job {pjid}" in page
    for section in ("Summary", "Pre-processing",
                    "2D classes: Class2D/job007, batch 1 (300 particles)", "Parameters"):
        assert section in page, section
    for title in ("Motion over time", "Defocus over time", "CTF resolution",
                  "Particles per micrograph", "Throughput and backlog"):
        assert f"<figcaption>{title}</figcaption>" in page, title
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) == 5 + 2
    assert all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pictures)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    assert "303 (LoG)" in page
    # the page is made again at any time; into the project by default, replaced each time
    assert cli(["report", "--config", str(site_file), str(pjid)]) == 0
    assert (project / "relion_zo_report.html").read_text().startswith("<!DOCTYPE html>")
    assert cli(["report", "--config", str(site_file), str(pjid)]) == 0
    # an existing file is never written over
    assert cli(["report", "--config", str(site_file), str(pjid), "--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
