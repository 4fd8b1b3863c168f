"""Movie checks on real files: what a pass may import, what it waits for, what it refuses."""

from __future__ import annotations

import os
from pathlib import Path

from relion_zo.devstack import synthetic
from relion_zo.movies import MovieChecker, matching
from relion_zo.relion_it import driver
from relion_zo.relion_it.stages import Stage

OLD = 1_700_000_000


def _settled(path: Path) -> Path:
    os.utime(path, (OLD, OLD))
    return path


def test_matching_follows_glob3_rules(tmp_path):
    synthetic.write_movies(tmp_path, 2, size=32, frames=2)
    (tmp_path / ".hidden.mrc").write_bytes(b"")  # RELION's glob(3) skips it: so do we
    (tmp_path / os.fsdecode(b"\xff.mrc")).write_bytes(b"")
    names = matching(tmp_path, "*.mrc")
    assert ".hidden.mrc" not in names
    assert len(names) == 3 and os.fsdecode(b"\xff.mrc") in names


def test_checker_accepts_complete_movies_once_and_waits_for_the_rest(tmp_path):
    [movie] = synthetic.write_movies(tmp_path, 1, size=32, frames=2)
    checker = MovieChecker([tmp_path])
    fresh = checker.problem(tmp_path, movie.name)
    assert fresh and fresh.may_still_arrive and "still being written" in fresh.reason
    _settled(movie)
    assert checker.problem(tmp_path, movie.name) is None
    data = movie.read_bytes()
    movie.write_bytes(data[:-100])
    _settled(movie)
    cut = checker.problem(tmp_path, movie.name)
    assert cut.may_still_arrive and f"incomplete ({len(data) - 100} of {len(data)} bytes)" in (
        cut.reason)


def test_checker_refuses_names_folders_links_and_non_tiffs(tmp_path):
    visit = tmp_path / "visit"
    visit.mkdir()
    [good] = synthetic.write_movies(tmp_path, 1, size=32, frames=2)  # outside the visit
    os.symlink(_settled(good), visit / "link.mrc")
    (visit / "folder.mrc").mkdir()
    _settled(_write(visit / "fake.tiff", b"not a tiff at all"))
    checker = MovieChecker([visit])
    assert "leads outside the visit" in checker.problem(visit, "link.mrc").reason
    assert checker.problem(visit, "folder.mrc").reason == "is not a file"
    assert "TIFF signature" in checker.problem(visit, "fake.tiff").reason
    assert "contains '$'" in checker.problem(visit, "$(id).mrc").reason
    _settled(_write(visit / "ok.tiff", b"II*\x00" + bytes(100)))
    assert checker.problem(visit, "ok.tiff") is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_name_that_slips_into_an_import_fails_the_pass(tmp_path):
    # A movie that arrived between the check and RELION's glob is caught from movies.star.
    stage = Stage("import_job", "Import", "Import", "movies.star", "movies", ())
    settings = driver.DriverSettings(project=tmp_path, stages=(stage,), movie_glob="Movies/*",
                                     movie_checker=MovieChecker([tmp_path]))
    run = driver._Run(settings, lambda: False, lambda p: None, lambda m: None)
    run.jobs["import_job"] = "Import/job001/"
    star = tmp_path / "Import" / "job001" / "movies.star"
    star.parent.mkdir(parents=True)
    star.write_text("data_optics\n\nloop_\n_rlnOpticsGroupName #1\nopticsGroup1\n\n"
                    "data_movies\n\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n"
                    "Movies/a.mrc 1\nMovies/b$(id).mrc 1\n")
    try:
        run.check_imported_names()
    except driver._Failed as exc:
        assert "Movies/b$(id).mrc" in str(exc) and "contains '$'" in str(exc)
    else:
        raise AssertionError("the unsafe name was not noticed")
