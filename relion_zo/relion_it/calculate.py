"""relion_it's "calculate for me": sizes a job may leave out, derived from the particle's
longest diameter and the pixel size with relion_it 3.1's own rules (its GUI derives them;
PATo leaves ``mask_diameter`` out when its box is ticked, and relies on them).

- ``mask_diameter``: 10 % wider than ``autopick_LoG_diam_max`` (Å);
- ``extract_boxsize``: 20 % larger than that diameter, in pixels, rounded up to even;
- ``extract_small_boxsize``: the first size of RELION's list whose pixel size is below
  4.25 Å (Nyquist better than 8.5 Å), never larger than the box itself;
- ``extract2_small_boxsize`` (the second pass's): the same size, as relion_it's GUI sets it.

A value the job (or the site's ``relion_it_defaults``) gives always wins.
"""

from __future__ import annotations

import math

from relion_zo.parameters import ParameterError, RelionItParameters

DOWNSCALE_BOX_SIZES = (48, 64, 96, 128, 160, 192, 256, 288, 300, 320, 360, 384, 400, 420, 450,
                       480, 512, 640, 768, 896, 1024)
DOWNSCALE_MAX_ANGPIX = 4.25
MASK_MARGIN = 1.1
BOX_MARGIN = 1.2


def mask_diameter(diameter_max: float) -> float:
    return round(MASK_MARGIN * diameter_max, 6)  # 198.0, not 198.00000000000003


def extract_boxsize(diameter_max: float, angpix: float) -> int:
    box = math.ceil(BOX_MARGIN * diameter_max / angpix)
    return box + box % 2


def extract_small_boxsize(boxsize: int, angpix: float) -> int:
    for size in DOWNSCALE_BOX_SIZES:
        if size > boxsize:
            return boxsize
        if angpix * boxsize / size < DOWNSCALE_MAX_ANGPIX:
            return size
    raise ParameterError("extract_boxsize", f"a box of {boxsize} pixels at {angpix} Å is too "
                         "large to downscale to 1024 pixels or fewer; give "
                         "extract_small_boxsize")


def with_calculated(params: RelionItParameters) -> RelionItParameters:
    """``params`` with the sizes it leaves out calculated, as relion_it would."""
    given = params.model_fields_set
    update: dict[str, object] = {}
    if "mask_diameter" not in given:
        update["mask_diameter"] = mask_diameter(params.autopick_LoG_diam_max)
    box = params.extract_boxsize
    if "extract_boxsize" not in given:
        box = update["extract_boxsize"] = extract_boxsize(params.autopick_LoG_diam_max,
                                                          params.angpix)
    if "extract_small_boxsize" not in given and params.extract_downscale:
        update["extract_small_boxsize"] = extract_small_boxsize(box, params.angpix)
    if "extract2_small_boxsize" not in given and params.extract2_downscale:
        # relion_it's GUI gives the second pass the first pass's small box
        update["extract2_small_boxsize"] = extract_small_boxsize(box, params.angpix)
    if not update:
        return params
    calculated = params.model_copy(update=update)
    calculated._given = dict(params._given)
    return calculated
