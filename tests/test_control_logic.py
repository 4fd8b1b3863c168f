"""Pure pieces of the buttons and the dispatcher filter (no servers needed)."""

from __future__ import annotations

import pytest

from relion_zo import control, dispatch
from relion_zo.errors import InputError


def test_overrides_replace_stored_values_and_keep_the_rest():
    stored = [("angpix", "1.0"), ("voltage", "300"), ("Cs", "2.7")]
    merged = control.merge(stored, [("voltage", "200"), ("motioncor_bfactor", "100")])
    assert merged == [("angpix", "1.0"), ("Cs", "2.7"), ("voltage", "200"),
                      ("motioncor_bfactor", "100")]


def test_an_override_given_twice_is_refused():
    with pytest.raises(InputError, match="given twice"):
        control.merge([], [("voltage", "200"), ("voltage", "300")])


def test_job_id_files_allow_comments_and_name_bad_lines(tmp_path):
    listing = tmp_path / "ids.txt"
    listing.write_text("# redo these\n12\n\n 13  # the second\n")
    assert control.read_job_ids(listing) == [12, 13]
    listing.write_text("12\nDROP TABLE\n")
    with pytest.raises(InputError, match="line 2: 'DROP TABLE' is not a job id"):
        control.read_job_ids(listing)
    with pytest.raises(InputError, match="cannot read"):
        control.read_job_ids(tmp_path / "missing.txt")


def test_the_ledger_survives_a_restart_of_the_bulk_run(tmp_path):
    ledger = control.Ledger(tmp_path / "ids.txt.done")
    ledger.record(12, 101)
    ledger.record(13, 102)
    with open(ledger.path, "a") as handle:
        handle.write("14")  # a line cut short by a crash
    again = control.Ledger(ledger.path)
    assert again.done == {12: 101, 13: 102}
    again.record(15, 103)
    assert control.Ledger(ledger.path).done == {12: 101, 13: 102, 15: 103}


@pytest.mark.parametrize("value", ["abc", "", None, "-3", "0", "1.5", "{ispyb_process}"])
def test_malformed_job_ids_are_refused(value):
    with pytest.raises(ValueError, match="is not a processing job id"):
        dispatch.parse_job_id(value)


def test_filter_leaves_named_recipes_and_other_messages_alone():
    message, parameters = dispatch.ispyb_job_filter({"recipes": ["relion"]},
                                                    {"ispyb_process": "42"})
    assert message == {"recipes": ["relion"]} and parameters == {"ispyb_process": 42}
    message, parameters = dispatch.ispyb_job_filter({"recipes": []}, {"ispyb_dcid": 7})
    assert message == {"recipes": []} and parameters == {"ispyb_dcid": 7}
