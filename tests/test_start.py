"""Start against the real MariaDB: one transaction, the duplicate guard, and bad input."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select, text

from conftest import GOOD_PARAMS, row_counts
from ispyb.sqlalchemy import (
    DataCollection,
    ProcessingJob,
    ProcessingJobImageSweep,
    ProcessingJobParameter,
)
from relion_zo import jobs, programs, status
from relion_zo.errors import ActiveJobError, InputError, NotFoundError, RelionZoError
from relion_zo.parameters import ParameterError


def start(db, site, v, params=None, **kw):
    where = dict(visit=v.name, image_directory=str(v.raw), file_template=v.template)
    where.update(kw)
    return jobs.start_job(db, site, GOOD_PARAMS if params is None else params, **where)


def test_start_writes_job_parameters_and_sweep(db, site, visit):
    before = row_counts(db)
    result = start(db, site, visit, {**GOOD_PARAMS, "motioncor_gainreference": "gain.mrc"})
    after = row_counts(db)
    assert result.created_data_collection and result.movies == 2
    for table, added in [("DataCollectionGroup", 1), ("DataCollection", 1), ("ProcessingJob", 1),
                         ("ProcessingJobParameter", 6), ("ProcessingJobImageSweep", 1)]:
        assert after[table] == before[table] + added, table
    job = db.execute(
        select(ProcessingJob).where(ProcessingJob.processingJobId == result.processing_job_id)
    ).scalar_one()
    assert job.recipe == "relion" and job.dataCollectionId == result.data_collection_id
    stored = dict(db.execute(
        select(ProcessingJobParameter.parameterKey, ProcessingJobParameter.parameterValue)
        .where(ProcessingJobParameter.processingJobId == job.processingJobId)).all())
    assert stored == {"angpix": "1.0", "voltage": "300", "Cs": "2.7",  # as given
                      "motioncor_doseperframe": "1.0", "motioncor_gainreference": "gain.mrc",
                      "stop_after_motion_correction": "true"}
    sweep = db.execute(select(ProcessingJobImageSweep).where(
        ProcessingJobImageSweep.processingJobId == job.processingJobId)).scalar_one()
    assert (sweep.dataCollectionId, sweep.startImage, sweep.endImage) == (
        result.data_collection_id, 1, 2)
    dc = db.execute(select(DataCollection).where(
        DataCollection.dataCollectionId == result.data_collection_id)).scalar_one()
    assert dc.imageDirectory == str(visit.raw) + "/" and dc.fileTemplate == "*.mrc"
    assert dc.SESSIONID == visit.session_id
    [state] = status.query_states(db, stale_seconds=site.stale_seconds,
                                  processing_job_id=result.processing_job_id)
    assert state.state == "submitted"


def test_load_job_types_the_parameters(db, site, visit):
    result = start(db, site, visit)
    spec = jobs.load_job(db, site, result.processing_job_id)
    assert spec.parameters.voltage == 300.0 and spec.parameters.motioncor_binning == 1
    assert spec.image_directory == visit.raw and spec.file_template == "*.mrc"
    assert spec.visit.name == visit.name and spec.visit_directory == visit.directory


def test_second_start_is_refused_while_active_and_allowed_after(db, site, visit):
    first = start(db, site, visit)
    before = row_counts(db)
    with pytest.raises(ActiveJobError) as info:
        start(db, site, visit)
    assert info.value.processing_job_id == first.processing_job_id
    assert "submitted" in str(info.value)
    with pytest.raises(ActiveJobError):
        jobs.start_job(db, site, GOOD_PARAMS, data_collection_id=first.data_collection_id)
    assert row_counts(db) == before
    # queued and running block too; a final status frees the data collection
    program = programs.register(db, first.processing_job_id)
    db.commit()
    with pytest.raises(ActiveJobError, match="queued"):
        start(db, site, visit)
    programs.mark_running(db, program)
    db.commit()
    with pytest.raises(ActiveJobError, match="running"):
        start(db, site, visit)
    programs.finish(db, program, success=True, message="done")
    db.commit()
    second = start(db, site, visit)
    assert second.data_collection_id == first.data_collection_id
    assert not second.created_data_collection


def test_start_by_data_collection_id(db, site, visit):
    first = start(db, site, visit)
    programs.finish(db, programs.register(db, first.processing_job_id), success=False,
                    message="x")
    db.commit()
    again = jobs.start_job(db, site, GOOD_PARAMS, data_collection_id=first.data_collection_id)
    assert again.data_collection_id == first.data_collection_id
    assert again.processing_job_id != first.processing_job_id


def test_sql_looking_values_are_stored_verbatim(db, site, visit):
    value = "'; DELETE FROM DataCollection; --"
    result = start(db, site, visit, comments=value, display_name="x'); DROP TABLE x; --")
    stored = db.execute(select(ProcessingJob.comments, ProcessingJob.displayName).where(
        ProcessingJob.processingJobId == result.processing_job_id)).one()
    assert tuple(stored) == (value, "x'); DROP TABLE x; --")
    assert db.execute(text("SELECT COUNT(*) FROM ProcessingJob")).scalar() >= 1


def _bad_cases(visit, site):
    outside = site.data_roots[0].parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    (outside / "a.mrc").write_bytes(b"")
    escape = visit.directory / "escape"
    if not escape.exists():
        os.symlink(outside, escape)
    other_visit = site.data_roots[0] / "2026" / "other-visit"
    other_visit.mkdir(parents=True, exist_ok=True)
    (other_visit / "b.mrc").write_bytes(b"")
    empty = visit.directory / "empty"
    empty.mkdir(exist_ok=True)
    (visit.directory / "processing" / "bad.mrc").write_text("not an image")
    p = GOOD_PARAMS
    return {
        "unknown key": (dict(params={**p, "bogus": "1"}), ParameterError, "bogus"),
        "repeated key": (dict(params=list(p.items()) + [("angpix", "2")]), ParameterError, "angpix"),
        "wrong type": (dict(params={**p, "voltage": "high"}), ParameterError, "voltage"),
        "voltage range": (dict(params={**p, "voltage": "-300"}), ParameterError, "voltage"),
        "pixel size range": (dict(params={**p, "angpix": "-1"}), ParameterError, "angpix"),
        "dose range": (dict(params={**p, "motioncor_doseperframe": "0"}), ParameterError,
                       "motioncor_doseperframe"),
        "missing gain": (dict(params={**p, "motioncor_gainreference": "nope.mrc"}),
                         ParameterError, "does not exist"),
        "gain not mrc": (dict(params={**p, "motioncor_gainreference": "../raw/x"}),
                         ParameterError, "motioncor_gainreference"),
        "gain unreadable": (dict(params={**p, "motioncor_gainreference": "bad.mrc"}),
                            ParameterError, "not a readable MRC"),
        "missing defect file": (dict(params={**p, "motioncor_defectfile": "defects.txt"}),
                                ParameterError, "motioncor_defectfile"),
        "ctffind missing": (dict(params={**p, "stop_after_motion_correction": "false",
                                         "stop_after_ctf_estimation": "true"}),
                            InputError, "ctffind is not available"),
        "picking with references": (dict(params={**p, "stop_after_ctf_estimation": "false",
                                                 "stop_after_motion_correction": "false",
                                                 "autopick_do_LoG": "false"}),
                                    InputError, "autopick_do_LoG"),
        "motioncor2 missing": (dict(params={**p, "motioncor_do_own": "false"}), InputError,
                               "MotionCor2 is not available"),
        "missing folder": (dict(image_directory=str(visit.directory / "nope")), InputError,
                           "does not exist"),
        "empty folder": (dict(image_directory=str(empty)), InputError, "matches no file"),
        "template matches nothing": (dict(file_template="*.tiff"), InputError, "matches no file"),
        "template not a movie": (dict(file_template="*"), InputError, "movie suffix"),
        "template climbs out": (dict(file_template="../*/a.mrc"), InputError, ".."),
        "relative folder": (dict(image_directory="raw"), InputError, "absolute"),
        "dotdot folder": (dict(image_directory=str(visit.directory / "raw" / ".." / "raw")),
                          InputError, ".."),
        "outside data roots": (dict(image_directory=str(outside)), InputError, "outside"),
        "symlink escape": (dict(image_directory=str(escape)), InputError, "outside"),
        "another visit's folder": (dict(image_directory=str(other_visit)), InputError, "outside"),
        "unknown visit": (dict(visit="zz99999999-9"), NotFoundError, "unknown visit"),
        "malformed visit": (dict(visit="'; DROP TABLE BLSession; --"), InputError, "visit"),
        "unknown dcid": (dict(data_collection_id=987654321, visit=None, image_directory=None,
                              file_template=None), NotFoundError, "987654321"),
        "dcid and folder": (dict(data_collection_id=1), InputError, "either"),
        "nothing to process": (dict(visit=None), InputError, "visit"),
    }


CASES = [
    "unknown key", "repeated key", "wrong type", "voltage range", "pixel size range",
    "dose range", "missing gain", "gain not mrc", "gain unreadable", "missing defect file",
    "ctffind missing", "picking with references",
    "motioncor2 missing", "missing folder", "empty folder",
    "template matches nothing", "template not a movie", "template climbs out", "relative folder",
    "dotdot folder", "outside data roots", "symlink escape", "another visit's folder",
    "unknown visit", "malformed visit", "unknown dcid", "dcid and folder", "nothing to process",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_writes_nothing(db, site, visit, case):
    kwargs, error, words = _bad_cases(visit, site)[case]
    (visit.raw / "x").write_text("not an image")
    before = row_counts(db)
    with pytest.raises(error) as info:
        start(db, site, visit, **kwargs)
    assert isinstance(info.value, RelionZoError)
    assert words in str(info.value)
    assert row_counts(db) == before


def test_unknown_job_id(db, site):
    with pytest.raises(NotFoundError, match="unknown processing job 987654321"):
        jobs.load_job(db, site, 987654321)
