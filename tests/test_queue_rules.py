"""The cluster queue's rules, pure logic: which queue options a job may give, what RELION's
job.star gets, and how squeue's lines name a project's RELION jobs (relion_zo.slurm). The
same paths on a real Slurm are in tests/test_slurm.py."""

from __future__ import annotations

import subprocess

import pytest
from conftest import GOOD_PARAMS

from relion_zo import parameters, slurm
from relion_zo.config import ConfigError, Queue, SiteConfig, load_config
from relion_zo.errors import InputError
from relion_zo.relion_it.stages import check_queue, queue_options, with_queue


def _site(tmp_path, queue: Queue | None) -> SiteConfig:
    return SiteConfig(data_roots=[tmp_path], visit_directory=str(tmp_path) + "/{visit}",
                      queue=queue)


def _params(**given):
    return parameters.parse({**GOOD_PARAMS, **{k: str(v) for k, v in given.items()}})


@pytest.mark.parametrize("given, field", [
    ({"refine_submit_to_queue": "true"}, "refine_submit_to_queue"),
    ({"queue_name": "relion"}, "queue_name"),
    ({"queue_submit_command": "qsub"}, "queue_submit_command"),
    ({"queue_minimum_dedicated": "4"}, "queue_minimum_dedicated"),
])
def test_a_site_without_a_queue_refuses_every_queue_option_naming_it(tmp_path, given, field):
    with pytest.raises(InputError, match=f"^parameter {field}: queue submission is not "
                                         "configured at this site; leave it out$"):
        check_queue(_params(**given), _site(tmp_path, None))


def test_a_job_chooses_among_the_sites_queues_and_nothing_else(tmp_path):
    site = _site(tmp_path, Queue(names=["relion", "gpu"]))
    check_queue(_params(queue_name="gpu", refine_submit_to_queue=True), site)
    with pytest.raises(InputError, match=r"^parameter queue_name: 'openmpi' is not a queue of "
                                         r"this site \(queue.names: relion, gpu\)$"):
        check_queue(_params(queue_name="openmpi"), site)
    # what RELION runs through its shell is the site's: a job may only repeat it
    check_queue(_params(queue_submit_command="sbatch"), site)
    for key, value in (("queue_submit_command", "sbatch; rm -rf ~"),
                       ("queue_submission_template", "/tmp/mine.sh")):
        with pytest.raises(InputError, match=f"^parameter {key}: the site sets it"):
            check_queue(_params(**{key: value}), site)


@pytest.mark.parametrize("name", ["relion;id", "../x", "a b", "-p", "x" * 65])
def test_a_queue_name_that_is_not_a_name_is_refused_when_parsed(name):
    with pytest.raises(parameters.ParameterError, match="^parameter queue_name: "):
        _params(queue_name=name)


def test_the_sites_values_fill_what_a_job_leaves_out(tmp_path):
    site = _site(tmp_path, Queue(names=["relion", "gpu"], minimum_dedicated=8))
    p = with_queue(_params(motioncor_submit_to_queue=True), site)
    assert queue_options(p, p.motioncor_submit_to_queue) == [
        ("Submit to queue?", True), ("Queue name: ", "relion"),
        ("Queue submit command:", "sbatch"),
        ("Standard submission script:", str(slurm.packaged_template())),
        ("Minimum dedicated cores per node:", 8)]
    assert queue_options(p, p.refine_submit_to_queue) == []
    assert queue_options(p, p.refine_submit_to_queue, always=True) == [
        ("Submit to queue?", False)]
    assert slurm.packaged_template().read_text().count("XXXcommandXXX") == 1


@pytest.mark.parametrize("setting, message", [
    ("submit_command: 'sbatch; id'", "queue.submit_command: "),
    ("submission_template: relative.sh", "queue.submission_template: must be an absolute"),
    ("names: ['a b']", "queue.names: 'a b' is not a queue name"),
    ("minimum_dedicated: 0", "queue.minimum_dedicated: "),
])
def test_a_bad_queue_setting_is_one_line_naming_it(tmp_path, setting, message):
    site = tmp_path / "site.yaml"
    site.write_text(f"data_roots: [{tmp_path}]\nvisit_directory: '{tmp_path}/{{visit}}'\n"
                    f"queue:\n  {setting}\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.", 1)):
        load_config(site)


PROJECT = "/data/2026/cm1-1/processed/relion_7"


def test_squeue_lines_name_the_projects_relion_jobs_only():
    text = "\n".join([
        f"41|RUNNING|None|{PROJECT}/MotionCorr/job002/run_submit.script",
        f"42|PENDING|Resources|{PROJECT}/Class2D/job008/run_submit.script",
        f"43|CANCELLED by 0|None|{PROJECT}/Class2D/job009/run_submit.script",
        f"44|RUNNING|None|{PROJECT}0/MotionCorr/job002/run_submit.script",  # another project
        "45|RUNNING|None|/home/someone/job.sh",
        f"46|RUNNING|None|{PROJECT}/MotionCorr/job002/other.sh",
        "garbage",
    ])
    jobs = slurm.parse_squeue(text, PROJECT)
    assert [(j.job_id, j.state, j.relion_job) for j in jobs] == [
        ("41", "RUNNING", "MotionCorr/job002/"), ("42", "PENDING", "Class2D/job008/"),
        ("43", "CANCELLED", "Class2D/job009/")]
    running, pending, cancelled = jobs
    assert running.active and not running.waiting and not running.failed
    assert pending.waiting and pending.describe() == "Slurm job 42 PENDING, Resources"
    assert cancelled.failed and not cancelled.active
    assert cancelled.describe() == "Slurm job 43 CANCELLED"


def test_cancelling_names_only_job_ids_and_a_failing_scancel_is_one_line():
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "scancel: error: Invalid job id\n")

    queue = Queue(submit_command="/usr/bin/sbatch")
    with pytest.raises(slurm.SlurmError, match="^scancel exited with status 1: scancel: error: "
                                               "Invalid job id$"):
        slurm.cancel(["12", "13; id", "14_2"], queue, run)
    assert calls == [["/usr/bin/scancel", "12", "14_2"]]
