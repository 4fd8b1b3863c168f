"""The parameter schema (pure logic)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ui_jobs import pato_rows, synchweb_rows

from relion_zo import parameters as p
from relion_zo.relion_it import options, stages

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
    assert p.explicit_items(again) == p.explicit_items(typed)
    assert dict(p.explicit_items(typed))["ctffind_do_phaseshift"] == "1"


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
        ([("motioncor_do_own", "yes")], "motioncor_do_own", "1, 0, true or false"),
        ([("extract_boxsize", "205")], "extract_boxsize", "even"),
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
    [("voltage", "0"), ("voltage", "-300"), ("angpix", "0"), ("angpix", "-1"), ("angpix", "inf"),
     ("angpix", "nan"), ("Cs", "-0.01"), ("Cs", "-inf"), ("motioncor_doseperframe", "0"),
     ("motioncor_doseperframe", "abc"), ("Cs", ""), ("motioncor_binning", "-1"),
     ("motioncor_mpi", "0"), ("motioncor_mpi", "4294967296"), ("ctffind_boxsize", "64"),
     ("ctffind_defocus_step", "0.5")],
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
    with pytest.raises(p.ParameterError, match="ctffind_defocus_min"):
        p.parse(GOOD + [("ctffind_defocus_min", "20000"), ("ctffind_defocus_max", "10000")])
    # CTFFIND takes a fixed defocus (minimum = maximum)
    assert p.parse(GOOD + [("ctffind_defocus_min", "20000"), ("ctffind_defocus_max", "20000")])


# --- The keys the web UIs write, as they write them

VISIT = "/dls/m02/data/2024/bi12345-1"
RAW, GAIN = f"{VISIT}/raw", f"{VISIT}/processing/gain.mrc"
SYNCHWEB_DEFAULT = dict(synchweb_rows(RAW, "GridSquare_*/Data/*.tiff", GAIN))
SYNCHWEB_EER_SECOND_PASS = dict(synchweb_rows(RAW, "GridSquare_*/Data/*.eer", GAIN,
                                              eer_second_pass=True))
PATO_DEFAULT = dict(pato_rows(RAW, ".tiff", GAIN, stop_after_ctf=False))
PATO_STOP_AFTER_CTF = dict(pato_rows(RAW, ".tiff", GAIN, stop_after_ctf=True))
PATO_SUFFIX_WITHOUT_DOT = dict(pato_rows(RAW, "tiff", GAIN, stop_after_ctf=True))


@pytest.mark.parametrize("job", [SYNCHWEB_DEFAULT, SYNCHWEB_EER_SECOND_PASS, PATO_DEFAULT],
                         ids=["synchweb", "synchweb-eer-second-pass", "pato"])
def test_a_web_ui_default_job_asks_for_relion_its_whole_pipeline_and_second_pass(job):
    """Neither UI writes do_second_pass, and relion_it's default is true: the job runs LoG
    picking, both classifications and then the second pass, as relion_it would."""
    typed = p.parse(job)
    assert typed.stop_after_ctf_estimation is False and typed.extract_boxsize == 204
    assert p.explicit_items(typed) == [(k, job[k]) for k in p.FIELDS if k in job]
    stages.check_stages(typed)
    assert stages.classifies(typed) and typed.autopick_do_LoG
    assert stages.second_pass(typed) and stages.classifies(typed, second=True)
    off = p.parse(job, {"do_second_pass": False})  # a site may turn it off for every job
    assert not stages.second_pass(off)
    assert p.explicit_items(off) == p.explicit_items(typed)  # the default is not stored


def test_picking_with_references_is_refused_naming_the_key():
    typed = p.parse({**PATO_DEFAULT, "autopick_do_LoG": "0"})
    with pytest.raises(p.ParameterError, match="^parameter autopick_do_LoG: picking with "):
        stages.check_stages(typed)


def test_a_job_without_3d_classification_has_no_second_pass():
    # relion_it moves on to pass 2 only from pass 1's Class3D
    typed = p.parse({**PATO_DEFAULT, "do_class3d": "0"})
    stages.check_stages(typed)
    assert typed.do_second_pass and not stages.second_pass(typed)


def _cryolo_site(tmp_path, cryolo, weights):
    from relion_zo.config import SiteConfig

    return SiteConfig(data_roots=[tmp_path], visit_directory=str(tmp_path) + "/{visit}",
                      executables={"ctffind": "/bin/sh", "cryolo": cryolo},
                      cryolo_weights=weights)


def test_cryolo_picks_where_the_site_names_it_and_log_elsewhere(tmp_path):
    """PATo's form ticks crYOLO: picked with LoG where the site names no crYOLO (the run log
    says so); crYOLO's External job where it does, once crYOLO and its model are found."""
    typed = p.parse(PATO_DEFAULT)
    assert typed.autopick_do_cryolo
    nowhere = _cryolo_site(tmp_path, None, None)
    stages.check_capabilities(typed, nowhere)
    assert not stages.uses_cryolo(typed, nowhere)
    assert stages.stages(typed, nowhere, "Movies/*.mrc", "")[3].job_type == "AutoPick"

    weights = tmp_path / "gmodel.h5"
    missing = _cryolo_site(tmp_path, "/opt/cryolo/bin/cryolo_predict.py", str(weights))
    with pytest.raises(p.InputError, match=r"^crYOLO \(/opt/cryolo/bin/cryolo_predict.py\) is "
                       "not installed here .*autopick_do_cryolo=false"):
        stages.check_capabilities(typed, missing)
    no_model = _cryolo_site(tmp_path, "/bin/true", str(weights))
    with pytest.raises(p.InputError, match=r"^crYOLO's model \(cryolo_weights: "):
        stages.check_capabilities(typed, no_model)

    weights.write_bytes(b"model")
    site = _cryolo_site(tmp_path, "/bin/true", str(weights))
    stages.check_capabilities(typed, site)
    picking = stages.stages(typed, site, "Movies/*.mrc", "")[3]
    assert (picking.name_in_script, picking.job_type) == ("autopick_job", "External")
    options = dict(picking.options)
    # the particle's largest diameter in the micrographs' pixels (PATo's 180 Å at 1.06 Å)
    assert options["Param1 - label:"] == "box_size" and options["Param1 - value:"] == round(
        typed.autopick_LoG_diam_max / typed.angpix)
    assert options["Param4 - value:"] == str(weights)
    assert options["External executable:"].endswith("relion-zo-cryolo-job")
    # relion_it's second pass still picks with pass 1's best class
    second = stages.picking_stages(typed, stages.Reference("Class3D/job009/c.mrc", "3.0"))
    assert second[0].job_type == "AutoPick"


@pytest.mark.parametrize("weights", ["gmodel.h5", "/models/g model.h5", "/models/$(id).h5"])
def test_cryolos_model_must_be_an_absolute_shell_safe_path(tmp_path, weights):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="cryolo_weights"):
        _cryolo_site(tmp_path, "/bin/true", weights)


def test_the_stage_check_comes_first_and_is_an_input_error():
    site = SimpleNamespace(executables=SimpleNamespace(
        relion_pipeliner="/nonexistent/relion_pipeliner", motioncor2="", ctffind=""))
    with pytest.raises(p.InputError, match="autopick_do_LoG"):
        stages.check_capabilities(p.parse({**PATO_DEFAULT, "autopick_do_LoG": "0"}), site)


def test_a_web_ui_job_that_stops_after_ctf_passes_the_stage_check():
    stages.check_stages(p.parse(PATO_STOP_AFTER_CTF))
    # PATo's glob from an imageSuffix stored without its dot ends in "*tiff"
    assert p.parse(PATO_SUFFIX_WITHOUT_DOT).import_images.endswith("/GridSquare*/Data/*tiff")
    stages.check_stages(p.parse({**SYNCHWEB_DEFAULT, "stop_after_ctf_estimation": "1"}))


@pytest.mark.parametrize(
    ("key", "text", "value", "bad", "words"),
    [
        ("acquisition_software", "SerialEM", "SerialEM", "x" * 81, "at most 80 characters"),
        ("use_fsc_criterion", "1", True, "maybe", "boolean"),
        ("do_class2d_pass2", "false", False, "2", "boolean"),
        ("do_class3d_pass2", "True", True, "on", "boolean"),
        ("eer_grouping", "32", 32, "0", "greater than or equal to 1"),
        ("eer_grouping", "40.0", 40, "1.5", "whole number"),
        ("extract_small_boxsize", "63", 63, "0", "greater than 0"),
        ("extract2_downscale", "1", True, "yes", "boolean"),
        ("extract2_small_boxsize", "128", 128, "-64", "greater than 0"),
        ("batch_size_pass2", "20000", 20000, "0", "greater than or equal to 1"),
        ("minimum_resolution_3dref_2ndpass", "12.5", 12.5, "0", "greater than 0"),
    ],
)
def test_the_keys_the_web_uis_write(key, text, value, bad, words):
    assert getattr(p.parse(GOOD + [(key, text)]), key) == value
    with pytest.raises(p.ParameterError) as info:
        p.parse(GOOD + [(key, bad)])
    assert info.value.key == key
    assert str(info.value).startswith(f"parameter {key}: ") and words in str(info.value)


def test_relion_it_defaults_of_the_new_keys():
    typed = p.parse(GOOD)
    assert typed.eer_grouping == 20 and typed.use_fsc_criterion is False
    assert typed.do_class2d_pass2 is True and typed.do_class3d_pass2 is False
    assert typed.acquisition_software is None


def test_acquisition_software_is_stored_but_not_a_relion_it_option():
    typed = p.parse(SYNCHWEB_DEFAULT)
    assert dict(p.explicit_items(typed))["acquisition_software"] == "EPU"
    assert "acquisition_software" in p.NOT_APPLICABLE
    text = options.options_text(typed, {}, processing_job_id=1)
    assert "acquisition_software" not in text and "EPU" not in text
    assert "use_fsc_criterion = False" in text and "extract_boxsize = 204" in text


@pytest.mark.parametrize(("key", "text"), [
    ("angpix", "100"), ("angpix", "0.02"), ("angpix", "250"), ("voltage", "1000"), ("Cs", "0"),
    ("Cs", "20"), ("motioncor_doseperframe", "25"), ("motioncor_binning", "3"),
    ("ctffind_astigmatism", "-1"), ("ctffind_defocus_min", "-2000"), ("ctffind_boxsize", "8192"),
    ("autopick_LoG_diam_max", "4000"), ("autopick_LoG_adjust_threshold", "-2"),
    ("mask_diameter", "12000"), ("class2d_nr_classes", "2000"), ("preprocess_repeat_wait", "120"),
])
def test_ranges_are_what_relion_accepts(key, text):
    pairs = [(k, v) for k, v in GOOD if k != key] + [(key, text)]
    assert getattr(p.parse(pairs), key) == float(text)


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("0", False), ("True", True), ("False", False), ("true", True),
    ("false", False), ("TRUE", True), (" 1 ", True), (True, True), (False, False), (1, True),
])
def test_booleans_as_the_web_uis_and_code_write_them(text, value):
    assert p.parse(GOOD + [("do_class2d", text)]).do_class2d is value


@pytest.mark.parametrize(("given", "stored"), [
    ("300", "300"), ("300.0", "300.0"), (" 300 ", "300"), (300, "300"), (300.0, "300.0"),
    (299.5, "299.5"),
])
def test_values_are_stored_as_given(given, stored):
    typed = p.parse([(k, v) for k, v in GOOD if k != "voltage"] + [("voltage", given)])
    assert dict(p.explicit_items(typed))["voltage"] == stored
    again = p.parse(p.explicit_items(typed))
    assert again == typed and p.explicit_items(again) == p.explicit_items(typed)


def test_booleans_from_code_are_stored_as_true_and_false():
    rows = dict(p.explicit_items(p.parse(GOOD + [("do_class2d", False), ("do_class3d", True)])))
    assert (rows["do_class2d"], rows["do_class3d"]) == ("false", "true")


def test_the_same_values_written_differently_are_equal():
    assert p.parse(GOOD) == p.parse([(k, v + " ") for k, v in GOOD[:-1]] + [
        ("motioncor_doseperframe", "1.20")])
    assert p.parse(GOOD + [("motioncor_binning", "2.0")]) == p.parse(GOOD + [("motioncor_binning", 2)])


def test_motion_correction_gets_relion_its_eer_arguments_always():
    """relion_it passes --eer_upsampling and --eer_grouping whatever the movies (RELION ignores
    them for others); coming last, they win over the job's own EER fractionation."""
    site = SimpleNamespace(executables=SimpleNamespace(ctffind="ctffind", motioncor2=""))
    typed = p.parse(GOOD + [("eer_grouping", "32")])
    for glob in ("Movies/*.eer", "Movies/*.tiff"):
        motioncor = dict(stages.stages(typed, site, glob, "")[1].options)
        assert motioncor["Additional arguments:"] == "--eer_upsampling 1 --eer_grouping 32"
    default = dict(stages.stages(p.parse(GOOD), site, "Movies/*.eer", "")[1].options)
    assert default["Additional arguments:"] == "--eer_upsampling 1 --eer_grouping 20"


def test_site_defaults_stand_in_for_missing_keys_and_are_never_stored():
    site = {"motioncor_mpi": 1, "motioncor_threads": "2", "angpix": "9"}
    typed = p.parse(GOOD + [("motioncor_threads", "3")], site)
    assert typed.motioncor_mpi == 1  # the site's, for a key the job left out
    assert typed.motioncor_threads == 3  # the job's own value wins
    assert typed.angpix == 1.06
    assert p.explicit_items(typed) == [(k, v) for k, v in p.explicit_items(
        p.parse(GOOD + [("motioncor_threads", "3")]))]
    assert "motioncor_mpi" not in dict(p.explicit_items(typed))


def test_relion_its_own_defaults_when_neither_job_nor_site_says():
    typed = p.parse(GOOD)
    assert (typed.motioncor_patches_x, typed.motioncor_patches_y) == (4, 4)
    assert (typed.motioncor_mpi, typed.motioncor_threads, typed.ctffind_mpi) == (4, 6, 8)
    assert typed.stop_after_ctf_estimation is False


def test_sizes_a_job_leaves_out_are_calculated_as_relion_it_does():
    """PATo's default leaves mask_diameter out; relion_it's rules give what SynchWeb's form
    computed for the same diameters (198 Å, box 204, small box 64)."""
    from relion_zo.relion_it import calculate

    pato = p.parse(PATO_DEFAULT)
    assert "mask_diameter" not in PATO_DEFAULT
    full = calculate.with_calculated(pato)
    assert (full.mask_diameter, full.extract_boxsize, full.extract_small_boxsize) == (198.0, 204,
                                                                                      64)
    synchweb = dict(synchweb_rows(RAW, "*.tiff", GAIN))
    assert (str(full.extract_boxsize), str(full.extract_small_boxsize)) == (
        synchweb["extract_boxsize"], synchweb["extract_small_boxsize"])
    assert p.explicit_items(full) == p.explicit_items(pato)  # never stored
    given = calculate.with_calculated(p.parse({**PATO_DEFAULT, "mask_diameter": "250"}))
    assert given.mask_diameter == 250  # a given value wins
    assert calculate.extract_boxsize(150, 1.0) == 180 and calculate.extract_boxsize(151, 1) == 182
    assert calculate.extract_small_boxsize(40, 1.0) == 40  # never above the box
    # no downscaling, no small box: a box too large to downscale is no reason to refuse
    whole = calculate.with_calculated(p.parse({**PATO_DEFAULT, "extract_downscale": "0",
                                               "extract_boxsize": "4000", "angpix": "3"}))
    assert whole.extract_boxsize == 4000 and whole.extract_small_boxsize == 64
    with pytest.raises(p.ParameterError, match="too large"):
        calculate.extract_small_boxsize(4000, 3.0)
    # the second pass's small box, as relion_it's GUI sets it: the first pass's
    second = calculate.with_calculated(p.parse({**PATO_DEFAULT, "extract2_downscale": "1"}))
    assert second.extract2_small_boxsize == 64
    assert calculate.with_calculated(p.parse(PATO_DEFAULT)).extract2_small_boxsize == 128


def test_every_relion_it_option_is_taken_or_refused_with_a_reason():
    """All 143 of relion_it 3.1's options: a field relion_zo types, or a refusal that says why
    and what to do; none is accepted and dropped."""
    from relion_it_3_1 import OPTIONS

    assert len(OPTIONS) == 143
    assert set(OPTIONS) <= set(p.FIELDS) | set(p.NOT_TAKEN)
    assert set(p.NOT_TAKEN) <= set(OPTIONS)
    for key in p.NOT_TAKEN:
        with pytest.raises(p.ParameterError) as info:
            p.parse(GOOD + [(key, "1")])
        assert info.value.key == key
        assert "relion_it 3.1 option relion_zo does not take" in str(info.value)
        assert str(info.value).endswith("leave it out")
