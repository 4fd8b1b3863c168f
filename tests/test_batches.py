"""Reading relion_it's batch files and model STAR files (relion_zo.relion_it.batches): pure
logic over small files written here in RELION 3.1's formats."""

from __future__ import annotations

import pytest

from relion_zo.relion_it import batches as bt

SPLIT = "Select/job006/"


def _particles(n: int) -> str:
    rows = "".join(f"{i:06d}@Extract/job005/Movies/m.mrcs MotionCorr/job002/Movies/m.mrc\n"
                   for i in range(1, n + 1))
    return ("\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n1\n\n"
            "data_particles\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n" + rows + "\n")


def test_batch_files_are_found_as_relion_it_finds_them(tmp_path):
    folder = tmp_path / SPLIT
    folder.mkdir(parents=True)
    (folder / "particles_split1.star").write_text(_particles(3))  # RELION 3.1's name
    (folder / "particles_split002.star").write_text(_particles(2))  # zero-padded
    assert bt.batch_count(tmp_path, SPLIT) == 2
    assert bt.batch_file(tmp_path, SPLIT, 1) == SPLIT + "particles_split1.star"
    assert bt.batch_file(tmp_path, SPLIT, 2) == SPLIT + "particles_split002.star"
    assert bt.batch_file(tmp_path, SPLIT, 3) is None
    assert bt.batch_size(tmp_path, SPLIT + "particles_split1.star") == 3
    assert bt.batch_count(tmp_path, "Select/job099/") == 0


MODEL = """
# version 30001

data_model_general

_rlnReferenceDimensionality                        3
_rlnPixelSize                                 3.333333

data_model_classes

loop_
_rlnReferenceImage #1
_rlnClassDistribution #2
_rlnAccuracyRotations #3
_rlnEstimatedResolution #4
Class3D/job009/run_it005_class001.mrc     0.200000   10.0   14.000000
Class3D/job009/run_it005_class002.mrc     0.500000   10.0   12.500000
Class3D/job009/run_it005_class003.mrc     0.300000   10.0   12.500000

"""


def test_the_best_class_is_the_best_resolved_then_the_largest(tmp_path):
    job = tmp_path / "Class3D" / "job009"
    job.mkdir(parents=True)
    (job / "run_it005_model.star").write_text(MODEL)
    best = bt.best_class(tmp_path, "Class3D/job009/run_it005_model.star")
    assert best == bt.BestClass("Class3D/job009/run_it005_class002.mrc", 12.5, 0.5, "3.333333")


def test_no_model_means_no_best_class(tmp_path):
    assert bt.best_class(tmp_path, "Class3D/job009/run_it005_model.star") is None
    assert bt.output_model_star(tmp_path, "Class3D/job009/") is None


def test_the_model_star_is_the_jobs_output_node(tmp_path):
    job = tmp_path / "InitialModel" / "job008"
    job.mkdir(parents=True)
    (job / "job_pipeline.star").write_text(
        "\ndata_pipeline_output_edges\n\nloop_\n_rlnPipeLineEdgeProcess #1\n"
        "_rlnPipeLineEdgeToNode #2\nInitialModel/job008/ InitialModel/job008/run_it012_data.star\n"
        "InitialModel/job008/ InitialModel/job008/run_it012_model.star\n"
        "InitialModel/job008/ InitialModel/job008/run_it012_class001.mrc\n\n")
    assert bt.output_model_star(tmp_path, "InitialModel/job008/") == \
        "InitialModel/job008/run_it012_model.star"


def _project_with_map(tmp_path):
    folder = tmp_path / "Class3D" / "job009"
    folder.mkdir(parents=True)
    (folder / "run_it005_class002.mrc").write_bytes(b"map")
    return tmp_path


def test_the_second_pass_reference_is_read_back_as_written(tmp_path):
    project = _project_with_map(tmp_path)
    assert bt.read_reference(project) is None  # the second pass has not begun
    reference = bt.Reference("Class3D/job009/run_it005_class002.mrc", "3.333333")
    (project / bt.SECOND_PASS_FILE).write_text(bt.reference_text(reference))
    assert bt.read_reference(project) == reference


@pytest.mark.parametrize(("text", "says"), [
    ("Class3D/job009/run_it005_class002.mrc\n", "two lines"),
    ("Class3D/job009/missing.mrc\n3.3\n", "does not exist"),
    ("/etc/passwd\n3.3\n", "inside the project"),
    ("../outside.mrc\n3.3\n", "inside the project"),
    ("Class3D/job009/link.mrc\n3.3\n", "inside the project"),
    ("Class3D/job009/run_it005_class002.mrc;touch x\n3.3\n", "shell"),
    ("Class3D/job009/run_it005_class002.mrc\n-1\n", "pixel size"),
    ("Class3D/job009/run_it005_class002.mrc\n3.3 --o /tmp/x\n", "pixel size"),
    ("Class3D/job009/run_it005_class002.mrc\nnan\n", "pixel size"),
])
def test_a_bad_second_pass_reference_is_refused_naming_what_is_wrong(tmp_path, text, says):
    """The file's map and pixel size go into RELION's commands (run through a shell)."""
    project = _project_with_map(tmp_path / "project")
    (tmp_path / "outside.mrc").write_bytes(b"map")
    (project / "Class3D" / "job009" / "link.mrc").symlink_to(tmp_path / "outside.mrc")
    (project / bt.SECOND_PASS_FILE).write_text(text)
    with pytest.raises(ValueError, match=says) as info:
        bt.read_reference(project)
    assert str(info.value).startswith(bt.SECOND_PASS_FILE)
