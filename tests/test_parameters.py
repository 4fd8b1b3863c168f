"""The parameter schema (pure logic)."""

from __future__ import annotations

import pytest

from relion_zo import parameters as p

GOOD = [("angpix", "1.06"), ("voltage", "300"), ("Cs", "2.7"), ("motioncor_doseperframe", "1.2")]


def test_strings_are_typed():
    typed = p.parse(GOOD + [("motioncor_binning", "2"), ("stop_after_ctf_estimation", "false")])
    assert typed.angpix == 1.06 and typed.voltage == 300.0 and typed.motioncor_binning == 2
    assert typed.stop_after_ctf_estimation is False
    assert typed.motioncor_do_own is True  # relion_it default


def test_native_values_from_a_file_are_accepted():
    typed = p.parse({"angpix": 1.0, "voltage": 200, "Cs": 2.7, "motioncor_doseperframe": 1,
                     "motioncor_do_own": True})
    assert typed.voltage == 200.0 and typed.motioncor_do_own is True


def test_stored_text_reads_back_to_the_same_values():
    typed = p.parse(GOOD + [("motioncor_gainreference", "gain.mrc"), ("ctffind_do_phaseshift", "1")])
    again = p.parse(p.explicit_items(typed))
    assert again == typed
    assert dict(p.explicit_items(typed))["ctffind_do_phaseshift"] == "true"


def test_only_given_keys_are_stored():
    keys = [k for k, _ in p.explicit_items(p.parse(GOOD))]
    assert sorted(keys) == sorted(k for k, _ in GOOD)


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ([("angpix_typo", "1")], "angpix_typo", "unknown key"),
        ([("angpix", "1.0")], "angpix", "more than once"),
        ([("motioncor_binning", "1.5")], "motioncor_binning", "whole number"),
        ([("motioncor_do_own", "maybe")], "motioncor_do_own", "boolean"),
        ([("ampl_contrast", "1.5")], "ampl_contrast", "less than or equal to 1"),
        ([("import_images", "../other/*.mrc")], "import_images", ".."),
        ([("import_images", "Movies/../../*.mrc")], "import_images", ".."),
        ([("import_images", "Movies/*.txt")], "import_images", "movie suffix"),
        ([("import_images", "x" * 1021 + ".mrc")], "import_images", "longer than 1024"),
        ([("motioncor_gainrot", "sideways")], "motioncor_gainrot", "No rotation (0)"),
        ([("motioncor_gpu", "0; rm -rf /")], "motioncor_gpu", "pattern"),
    ],
)
def test_bad_values_name_the_key(extra, key, words):
    pairs = GOOD + extra
    with pytest.raises(p.ParameterError) as info:
        p.parse(pairs)
    assert info.value.key == key
    assert key in str(info.value) and words in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("voltage", "1000"), ("voltage", "-300"), ("angpix", "0"), ("angpix", "inf"),
     ("angpix", "nan"), ("motioncor_doseperframe", "0"), ("motioncor_doseperframe", "abc"),
     ("Cs", "")],
)
def test_out_of_range_or_not_numbers(key, value):
    pairs = [(k, v) for k, v in GOOD if k != key] + [(key, value)]
    with pytest.raises(p.ParameterError) as info:
        p.parse(pairs)
    assert info.value.key == key


def test_missing_required_keys_are_named():
    with pytest.raises(p.ParameterError) as info:
        p.parse([("angpix", "1.0")])
    assert info.value.key == "voltage"
    assert "Cs" in str(info.value) and "motioncor_doseperframe" in str(info.value)


def test_key_value_arguments():
    assert p.pairs_from_args(["angpix=1.0", "import_images=a=b/*.mrc"]) == [
        ("angpix", "1.0"), ("import_images", "a=b/*.mrc")]
    with pytest.raises(p.ParameterError):
        p.pairs_from_args(["angpix"])


def test_sql_looking_values_are_plain_text():
    typed = p.parse(GOOD + [("symmetry", "C1")])
    assert typed.symmetry == "C1"
    # A quote cannot reach RELION's shell either, so such a glob is refused, naming the key.
    with pytest.raises(p.ParameterError, match="import_images: contains \"'\""):
        p.parse(GOOD + [("import_images", "x'; DROP TABLE ProcessingJob; --.mrc")])


def test_ranges_that_depend_on_each_other():
    with pytest.raises(p.ParameterError, match="ctffind_minres"):
        p.parse(GOOD + [("ctffind_minres", "4"), ("ctffind_maxres", "5")])
