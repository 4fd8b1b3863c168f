"""The jobs PATo and SynchWeb write, row for row, as each writes them (docs/web-uis.md has the
sources): ``ProcessingJobParameter`` rows in the order the UI inserts them, booleans as 1/0 (PATo's
mysqlclient and SynchWeb's PHP both store them so), numbers as their drivers print them. The user
typed pixel size 1.06, dose 1.2 and LoG diameters 150/180; the forms' other defaults are kept."""

from __future__ import annotations


def pato_rows(image_directory: str, image_suffix: str, gain: str, *,
              stop_after_ctf: bool, angpix: str = "1.06", dose: str = "1.2",
              diameters: tuple[str, str] = ("150", "180"),
              boxsize: str = "204") -> list[tuple[str, str]]:
    """pato-backend ``src/pato/models/reprocessing.py`` and pato-frontend's form (which ticks
    crYOLO). "Calculate for me" drops ``mask_diameter`` (the form works out the box:
    ``boxsize``); stopping after CTF leaves out every picking and classification key."""
    rows = [("voltage", "300"), ("Cs", "2.7"), ("ctffind_do_phaseshift", "0"),
            ("angpix", angpix), ("motioncor_binning", "1"), ("motioncor_doseperframe", dose),
            ("stop_after_ctf_estimation", "1" if stop_after_ctf else "0")]
    if not stop_after_ctf:
        rows += [("autopick_do_cryolo", "1"), ("do_class3d", "1"), ("do_class2d", "1"),
                 ("extract_boxsize", boxsize), ("use_fsc_criterion", "0"),
                 ("autopick_LoG_diam_min", diameters[0]),
                 ("autopick_LoG_diam_max", diameters[1]), ("extract_downscale", "1")]
    return rows + [("motioncor_gainreference", gain), (
        "import_images", f"{image_directory}/GridSquare*/Data/*{image_suffix}")]


def synchweb_rows(image_directory: str, file_template: str, gain: str, *,
                  eer_second_pass: bool = False) -> list[tuple[str, str]]:
    """SynchWeb's RELION form (``api/src/Page/EM/RelionSchema.php``, until 2024): not stopping
    after CTF, mask and boxes calculated; EER movies add ``eer_grouping``, a second pass its two
    keys."""
    rows = [("acquisition_software", "EPU"),
            ("import_images", f"{image_directory}/{file_template}"),
            ("motioncor_gainreference", gain), ("voltage", "300"), ("Cs", "2.7"),
            ("ctffind_do_phaseshift", "0"), ("angpix", "1.06"), ("motioncor_binning", "1"),
            ("motioncor_doseperframe", "1.2"), ("stop_after_ctf_estimation", "0"),
            ("do_class2d", "1"), ("do_class3d", "1"), ("use_fsc_criterion", "0"),
            ("autopick_do_cryolo", "0"), ("autopick_LoG_diam_min", "150"),
            ("autopick_LoG_diam_max", "180"), ("mask_diameter", "198"),
            ("extract_boxsize", "204"), ("extract_small_boxsize", "64")]
    if eer_second_pass:
        rows += [("eer_grouping", "20"), ("do_class2d_pass2", "1"), ("do_class3d_pass2", "0")]
    return rows
