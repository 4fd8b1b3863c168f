"""RELION 3.1's ``relion_it.py`` as data: its options, the jobs it adds, and the rules it follows.

Reference data only (constants, no logic), for checking relion_zo against relion_it. Facts were
read from 3dem/relion tag 3.1.3 (commit 3ee3b6e8770cd31305b120d3aabbb273c9ec184a),
``scripts/relion_it.py``; the file is identical at tag 3.1.4 and on branch ``ver3.1``. Numbers in
comments (``# 1563``) are line numbers in that file unless another file is named. Option names,
defaults and job-option labels are RELION's; descriptions are ours.

Conventions in ``JOB_OPTIONS``:
- a label is what RELION reads as the label: the text before `` == `` in relion_it's
  ``'label == value'`` item. RELION's ``RelionJob::setOption`` (src/pipeline_jobs.cpp:304-325)
  cuts the label at one character before ``==`` and matches it exactly against the job's own
  labels, so the trailing blank in e.g. ``'Subset size: '`` is part of the label. Every label
  below exists in RELION 3.1.3's src/pipeline_jobs.cpp (checked).
- a source is a relion_it option name (the value is ``str.format``-ed), ``"'Yes'"`` for a fixed
  text, or a short expression; ``[only if ...]`` marks an item relion_it appends conditionally.
"""

RELION_IT_SOURCE = {
    "repository": "3dem/relion",
    "tag": "3.1.3",
    "commit": "3ee3b6e8770cd31305b120d3aabbb273c9ec184a",
    "path": "scripts/relion_it.py",
    "same_in": ("3.1.4", "ver3.1"),
    "options_class_lines": (288, 641),  # class RelionItOptions ... "### End of options"
}

# Every option of relion_it 3.1's RelionItOptions, in its order, with its default (143 in all).
OPTIONS = {
    # General parameters
    "angpix": 0.885,  # 302
    "voltage": 200,  # 304
    "Cs": 1.4,  # 306
    # Import
    "import_images": "Movies/*.tiff",  # 310
    "images_are_movies": True,  # 312
    # Motion correction (experiment)
    "motioncor_doseperframe": 1.277,  # 317
    "motioncor_gainreference": "Movies/gain.mrc",  # 319
    "eer_upsampling": 1,  # 321
    "eer_grouping": 20,  # 323
    # Autopick (experiment)
    "autopick_do_LoG": True,  # 331
    "autopick_LoG_diam_min": 150,  # 333
    "autopick_LoG_diam_max": 180,  # 334
    "autopick_LoG_adjust_threshold": 0.0,  # 336
    "autopick_LoG_upper_threshold": 999.0,  # 337
    "autopick_2dreferences": "",  # 342
    "autopick_3dreference": "",  # 344
    "autopick_refs_threshold": 0.4,  # 347
    "autopick_refs_min_distance": 120,  # 349
    "autopick_stddev_noise": -1,  # 354
    "autopick_avg_noise": -999,  # 356
    # Extract (experiment)
    "extract_boxsize": 256,  # 361
    "extract_downscale": False,  # 363
    "extract_small_boxsize": 64,  # 365
    "extract2_downscale": False,  # 367
    "extract2_small_boxsize": 128,  # 369
    # Classification (experiment)
    "do_class2d": True,  # 373
    "do_class3d": True,  # 375
    "batch_size": 10000,  # 377
    "class2d_nr_classes": 50,  # 379
    "mask_diameter": 190,  # 381
    "symmetry": "C1",  # 383
    "class3d_nr_classes": 4,  # 387
    "have_3d_reference": False,  # 389
    "class3d_reference": "",  # 391
    "class3d_ref_is_correct_greyscale": False,  # 393
    "class3d_ref_is_ctf_corrected": True,  # 395
    "class3d_ini_lowpass": 40,  # 397
    # Second pass
    "do_second_pass": True,  # 401
    "minimum_resolution_3dref_2ndpass": 20,  # 403
    "do_class2d_pass2": True,  # 405
    "do_class3d_pass2": False,  # 407
    "batch_size_pass2": 100000,  # 409
    # Repeat settings
    "preprocess_repeat_times": 999,  # 418
    "preprocess_repeat_wait": 1,  # 420 (minutes)
    "stop_after_ctf_estimation": False,  # 422
    "batch_repeat_time": 1,  # 424 (minutes)
    # Motion correction (set-up)
    "motioncor_do_own": True,  # 429
    "motioncor_threads": 6,  # 431
    "motioncor_exe": "/public/EM/MOTIONCOR2/MotionCor2",  # 433
    "motioncor_gpu": "0",  # 435
    "motioncor_mpi": 4,  # 437
    "motioncor_patches_x": 4,  # 439
    "motioncor_patches_y": 4,  # 440
    "motioncor_bfactor": 150,  # 442
    "motioncor_binning": 1,  # 444
    "motioncor_defectfile": "",  # 446
    "motioncor_gainflip": "No flipping (0)",  # 448
    "motioncor_gainrot": "No rotation (0)",  # 449
    "motioncor_other_args": "",  # 451
    "motioncor_submit_to_queue": False,  # 453
    # CTF estimation (set-up)
    "ampl_contrast": 0.1,  # 458
    "ctffind_boxsize": 512,  # 460
    "ctffind_astigmatism": 100,  # 461
    "ctffind_maxres": 5,  # 462
    "ctffind_minres": 30,  # 463
    "ctffind_defocus_max": 50000,  # 464
    "ctffind_defocus_min": 5000,  # 465
    "ctffind_defocus_step": 500,  # 466
    "ctffind_do_ignore_search_params": True,  # 468
    "ctffind_do_EPA": True,  # 470
    "ctffind_do_phaseshift": False,  # 472
    "gctf_exe": "/public/EM/Gctf/bin/Gctf",  # 474
    "gctf_gpu": "0",  # 476
    "use_ctffind_instead": True,  # 478
    "ctffind4_exe": "/public/EM/ctffind/ctffind.exe",  # 480
    "ctffind_mpi": 8,  # 482
    "ctffind_submit_to_queue": False,  # 484
    # Autopick (set-up)
    "autopick_do_gpu": True,  # 489
    "autopick_gpu": "0",  # 491
    "autopick_lowpass": 20,  # 493
    "autopick_shrink_factor": 0,  # 495
    "autopick_mpi": 1,  # 497
    "autopick_other_args": "",  # 499
    "autopick_submit_to_queue": False,  # 501
    "autopick_refs_are_ctf_corrected": True,  # 503
    "autopick_refs_have_inverted_contrast": True,  # 505
    "autopick_refs_ignore_ctf1stpeak": False,  # 507
    "autopick_refs_mask_diam": -1,  # 509
    "autopick_inplane_sampling": 10,  # 511
    "autopick_3dref_symmetry": "C1",  # 513
    "autopick_3dref_sampling": "30 degrees",  # 515
    "autopick_ref_angpix": -1,  # 517
    # Extract (set-up)
    "extract_bg_diameter": -1,  # 521
    "extract_mpi": 1,  # 523
    "extract_submit_to_queue": False,  # 525
    # Discard on image statistics
    "do_discard_on_image_statistics": False,  # 529
    "discard_sigma": 4,  # 531
    "discard_submit_to_queue": False,  # 533
    # relion_refine, shared by Class2D, InitialModel and Class3D
    "refine_preread_images": False,  # 538
    "refine_scratch_disk": "",  # 540
    "refine_nr_pool": 10,  # 542
    "refine_do_gpu": True,  # 544
    "refine_gpu": "1",  # 546
    "refine_mpi": 1,  # 548
    "refine_threads": 6,  # 550
    "refine_skip_padding": False,  # 552
    "refine_submit_to_queue": False,  # 554
    "refine_batchsize_for_fast_subsets": 10000,  # 556
    # Class2D
    "minimum_batch_size": 10000,  # 560
    "class2d_nr_iter": 20,  # 563
    "class2d_angle_step": 6,  # 565
    "class2d_offset_range": 5,  # 567
    "class2d_offset_step": 1,  # 569
    "class2d_ctf_ign1stpeak": False,  # 571
    "class2d_other_args": "",  # 573
    # Class3D
    "class3d_nr_iter": 20,  # 579
    "class3d_reference_mask": "",  # 581
    "class3d_ctf_ign1stpeak": False,  # 583
    "class3d_T_value": 4,  # 585
    "class3d_angle_step": "7.5 degrees",  # 587
    "class3d_offset_range": 5,  # 589
    "class3d_offset_step": 1,  # 591
    "class3d_other_args": "",  # 593
    # InitialModel (SGD)
    "inimodel_nr_classes": 4,  # 598
    "inimodel_ctf_ign1stpeak": False,  # 600
    "inimodel_solvent_flatten": True,  # 602
    "inimodel_angle_step": "15 degrees",  # 604
    "inimodel_offset_range": 6,  # 606
    "inimodel_offset_step": 2,  # 608
    "inimodel_nr_iter_initial": 50,  # 610
    "inimodel_nr_iter_inbetween": 200,  # 612
    "inimodel_nr_iter_final": 50,  # 614
    "inimodel_freq_writeout": 10,  # 616
    "inimodel_resol_ini": 35,  # 618
    "inimodel_resol_final": 15,  # 620
    "inimodel_batchsize_ini": 100,  # 622
    "inimodel_batchsize_final": 500,  # 624
    "inimodel_sigmafudge_halflife": -1,  # 626
    "inimodel_other_args": " --sgd_skip_anneal ",  # 628
    # Cluster submission
    "queue_name": "openmpi",  # 633
    "queue_submit_command": "qsub",  # 635
    "queue_submission_template": "/public/EM/RELION/relion/bin/qsub.csh",  # 637
    "queue_minimum_dedicated": 1,  # 639
}
OPTION_COUNT = 143

# ---------------------------------------------------------------------------------------------
# Files and names

PIPELINE_STAR = "default_pipeline.star"  # 280; written with a job counter of 1 if missing, 1482-1486
RUNNING_FILE = "RUNNING_RELION_IT"  # 281; created empty at start, 1489-1490
SECONDPASS_REF3D_FILE = "RELION_IT_2NDPASS_3DREF"  # 282; two lines: map file, its pixel size
SUBMITTED_JOBS_FILE = "RELION_IT_SUBMITTED_JOBS"  # 283 (SETUP_CHECK_FILE)
OPTIONS_FILE = "relion_it_options.py"  # 286
GUI_PROJECT_FILE = ".gui_projectdir"  # 1493-1494: created empty so RELION's GUI opens the project
MANUALPICK_GUI_FILE = ".gui_manualpickrun.job"  # 1421-1440, only if missing; 1496-1501
# RELION_IT_SUBMITTED_JOBS line format (1375): "<name_in_script> = <JobType/jobNNN/>\n".
SUBMITTED_JOBS_LINE = "{name} = {job}\n"

# The names relion_it records in RELION_IT_SUBMITTED_JOBS ("{:03d}" is the batch number from 1).
SUBMITTED_JOB_NAMES = (
    "import_job",  # 1559 (both passes share it)
    "motioncorr_job",  # 1593 (both passes)
    "ctffind_job",  # 1639 (both passes)
    "autopick_job",  # 1704 pass 1
    "autopick2_job",  # 1707 pass 2
    "extract_job",  # 1733 pass 1
    "extract2_job",  # 1736 pass 2
    "split_job",  # 1749 pass 1
    "split2_job",  # 1753 pass 2
    "discard_job",  # 1840 pass 1 (one job, not one per batch)
    "discard2_job",  # 1842 pass 2
    "class2d_job_batch_{:03d}",  # 1901 pass 1
    "class2d_pass2_job_batch_{:03d}",  # 1904 pass 2
    "inimodel",  # 1974 (pass 1 only)
    "class3d_job_batch_{:03d}",  # 2059 pass 1
    "class3d2_job_batch_{:03d}",  # 2062 pass 2
)

# Job aliases (--setJobAlias); jobs not listed get none.
JOB_ALIASES = {
    "autopick_job": "pass 1",  # 1705
    "autopick2_job": "pass 2",  # 1708
    "extract_job": "pass 1",  # 1734
    "extract2_job": "pass 2",  # 1737
    "split_job": "into {batch_size}",  # 1751
    "split2_job": "into {batch_size_pass2}",  # 1755
    "class2d_job_batch_{:03d}": "pass1_batch_{:03d}",  # 1902
    "class2d_pass2_job_batch_{:03d}": "pass2_batch_{:03d}",  # 1905
    "class3d_job_batch_{:03d}": "pass1_batch_{:03d}",  # 2060
    "class3d2_job_batch_{:03d}": "pass2_batch_{:03d}",  # 2063
}

# relion_pipeliner --addJob types, in the order run_pipeline adds them.
JOB_TYPES = (
    "Import",  # 1559
    "MotionCorr",  # 1593, only if images_are_movies
    "CtfFind",  # 1639
    "AutoPick",  # 1710
    "Extract",  # 1739
    "Select",  # 1757 split into batches
    "Select",  # 1847 discard on image statistics (optional)
    "Class2D",  # 1907
    "InitialModel",  # 1974
    "Class3D",  # 2065
)

# Which key of JOB_OPTIONS each submitted name uses, and its job type.
JOB_OF_NAME = {
    "import_job": ("import", "Import"),
    "motioncorr_job": ("motioncorr", "MotionCorr"),
    "ctffind_job": ("ctffind", "CtfFind"),
    "autopick_job": ("autopick", "AutoPick"),
    "autopick2_job": ("autopick2", "AutoPick"),
    "extract_job": ("extract", "Extract"),
    "extract2_job": ("extract2", "Extract"),
    "split_job": ("split", "Select"),
    "split2_job": ("split2", "Select"),
    "discard_job": ("discard", "Select"),
    "discard2_job": ("discard2", "Select"),
    "class2d_job_batch_{:03d}": ("class2d", "Class2D"),
    "class2d_pass2_job_batch_{:03d}": ("class2d_pass2", "Class2D"),
    "inimodel": ("inimodel", "InitialModel"),
    "class3d_job_batch_{:03d}": ("class3d", "Class3D"),
    "class3d2_job_batch_{:03d}": ("class3d2", "Class3D"),
}

# ---------------------------------------------------------------------------------------------
# --addJobOptions, per job, in relion_it's order: (label as RELION reads it, where the value
# comes from).

IMPORT_OPTIONS = (  # 1547-1557
    ("Raw input files:", "import_images"),
    ("Import raw movies/micrographs?", "'Yes'"),
    ("Pixel size (Angstrom):", "angpix"),
    ("Voltage (kV):", "voltage"),
    ("Spherical aberration (mm):", "Cs"),
    ("Amplitude contrast:", "ampl_contrast"),
    ("Are these multi-frame movies?", "'Yes' if images_are_movies else 'No'"),
    # not passed: "Optics group name:" (RELION's job default "opticsGroup1")
)

MOTIONCORR_OPTIONS = (  # 1563-1588; the whole job only if images_are_movies (1561)
    ("Input movies STAR file:", "import_job + 'movies.star'"),
    ("MOTIONCOR2 executable:", "motioncor_exe"),
    ("Defect file:", "motioncor_defectfile"),
    ("Gain-reference image:", "motioncor_gainreference"),
    ("Gain flip:", "motioncor_gainflip"),
    ("Gain rotation:", "motioncor_gainrot"),
    ("Do dose-weighting?", "'Yes'"),
    ("Dose per frame (e/A2):", "motioncor_doseperframe"),
    ("Number of patches X:", "' ' + motioncor_patches_x (relion_it writes '==  ', a leading blank)"),
    ("Number of patches Y:", "motioncor_patches_y"),
    ("Bfactor:", "' ' + motioncor_bfactor (relion_it writes '==  ', a leading blank)"),
    ("Binning factor:", "motioncor_binning"),
    ("Which GPUs to use:", "motioncor_gpu"),
    ("Other MOTIONCOR2 arguments", "motioncor_other_args"),
    ("Number of threads:", "motioncor_threads"),
    ("Number of MPI procs:", "motioncor_mpi"),
    ("Additional arguments:",
     "'--eer_upsampling {eer_upsampling} --eer_grouping {eer_grouping}' (always, EER or not)"),
    ("Use RELION's own implementation?", "'Yes' if motioncor_do_own else 'No'"),
    ("Save sum of power spectra?",
     "'Yes' if use_ctffind_instead else 'No' [only if motioncor_do_own]"),
    # not passed: "EER fractionation:" (job default 32; the --eer_grouping in "Additional
    # arguments:" comes later on the command line and RELION takes the last one), "Group
    # frames:", "First/Last frame for corrected sum:", "Pre-exposure (e/A2):",
    # "Save non-dose weighted as well?", "Sum power spectra every e/A2:" (job default 4)
)

CTFFIND_OPTIONS = (  # 1597-1634
    ("Amount of astigmatism (A):", "ctffind_astigmatism"),
    ("FFT box size (pix):", "ctffind_boxsize"),
    ("Maximum defocus value (A):", "ctffind_defocus_max"),
    ("Minimum defocus value (A):", "ctffind_defocus_min"),
    ("Defocus step size (A):", "ctffind_defocus_step"),
    ("Maximum resolution (A):", "ctffind_maxres"),
    ("Minimum resolution (A):", "ctffind_minres"),
    ("Gctf executable:", "gctf_exe"),
    ("Which GPUs to use:", "gctf_gpu"),
    ("CTFFIND-4.1 executable:", "ctffind4_exe"),
    ("Number of MPI procs:", "ctffind_mpi"),
    ("Input micrographs STAR file:",
     ("motioncorr_job + 'corrected_micrographs.star' if images_are_movies "
      "else import_job + 'micrographs.star'")),
    ("Use CTFFIND-4.1?", "'Yes' if use_ctffind_instead else 'No'"),
    ("Use Gctf instead?", "'No' if use_ctffind_instead else 'Yes'"),
    ("Use power spectra from MotionCorr job?",
     "'Yes' if use_ctffind_instead else 'No' (Yes even when motioncor_do_own is False)"),
    ("Ignore 'Searches' parameters?",
     "'Yes' if ctffind_do_ignore_search_params else 'No' [only if not use_ctffind_instead]"),
    ("Perform equi-phase averaging?",
     "'Yes' if ctffind_do_EPA else 'No' [only if not use_ctffind_instead]"),
    ("Estimate phase shifts?", "'Yes' if ctffind_do_phaseshift else 'No'"),
    # not passed: "Use exhaustive search?" (job default No, i.e. --fast_search),
    # "Use micrograph without dose-weighting?" (No), "Number of threads:", phase-shift ranges
)

# Pass 1 uses the options as set (LoG by default); pass 2 uses the same list after relion_it
# set autopick_3dreference / autopick_ref_angpix to the best Class3D class of pass 1 (or to
# RELION_IT_2NDPASS_3DREF's two lines), autopick_2dreferences = '', autopick_do_LoG = False and
# autopick_3dref_symmetry = symmetry (2085-2091, 1534-1537).
AUTOPICK_OPTIONS = (  # 1648-1698
    ("Input micrographs for autopick:", "ctffind_job + 'micrographs_ctf.star'"),
    ("Min. diameter for LoG filter (A)", "autopick_LoG_diam_min"),
    ("Max. diameter for LoG filter (A)", "autopick_LoG_diam_max"),
    ("Maximum resolution to consider (A)", "autopick_lowpass"),
    ("Adjust default threshold (stddev):", "autopick_LoG_adjust_threshold"),
    ("Upper threshold (stddev):", "autopick_LoG_upper_threshold"),
    ("2D references:", "autopick_2dreferences"),
    ("3D reference:", "autopick_3dreference"),
    ("Symmetry:", "autopick_3dref_symmetry"),
    ("Pixel size in references (A)", "autopick_ref_angpix"),
    ("3D angular sampling:", "autopick_3dref_sampling"),
    ("In-plane angular sampling (deg)", "autopick_inplane_sampling"),
    ("Picking threshold:", "autopick_refs_threshold"),
    ("Minimum inter-particle distance (A):", "autopick_refs_min_distance"),
    ("Mask diameter (A)", "autopick_refs_mask_diam"),
    ("Maximum stddev noise:", "autopick_stddev_noise"),
    ("Minimum avg noise:", "autopick_avg_noise"),
    ("Shrink factor:", "autopick_shrink_factor"),
    ("Which GPUs to use:", "autopick_gpu"),
    ("Additional arguments:", "autopick_other_args"),
    ("Number of MPI procs:", "autopick_mpi"),
    ("OR: provide a 3D reference?", "'Yes' if autopick_3dreference != '' else 'No'"),
    ("OR: use Laplacian-of-Gaussian?", "'Yes' if autopick_do_LoG else 'No'"),
    ("Are References CTF corrected?", "'Yes' if autopick_refs_are_ctf_corrected else 'No'"),
    ("References have inverted contrast?",
     "'Yes' if autopick_refs_have_inverted_contrast else 'No'"),
    ("Ignore CTFs until first peak?", "'Yes' if autopick_refs_ignore_ctf1stpeak else 'No'"),
    ("Use GPU acceleration?", "'Yes' if autopick_do_gpu and not autopick_do_LoG else 'No'"),
)

EXTRACT_OPTIONS = (  # 1714-1723, pass 1
    ("Input coordinates: ", "autopick_job + 'coords_suffix_autopick.star'"),
    ("micrograph STAR file: ", "ctffind_job + 'micrographs_ctf.star'"),
    ("Diameter background circle (pix): ", "extract_bg_diameter"),
    ("Particle box size (pix):", "extract_boxsize"),
    ("Number of MPI procs:", "extract_mpi"),
    ("Rescale particles?", "'Yes' [only if extract_downscale]"),
    ("Re-scaled size (pixels): ", "extract_small_boxsize [only if extract_downscale]"),
)

EXTRACT2_OPTIONS = (  # 1714-1718, 1725-1727, pass 2
    ("Input coordinates: ", "autopick2_job + 'coords_suffix_autopick.star'"),
    ("micrograph STAR file: ", "ctffind_job + 'micrographs_ctf.star'"),
    ("Diameter background circle (pix): ", "extract_bg_diameter"),
    ("Particle box size (pix):", "extract_boxsize"),
    ("Number of MPI procs:", "extract_mpi"),
    ("Rescale particles?", "'Yes' [only if extract2_downscale]"),
    ("Re-scaled size (pixels): ", "extract2_small_boxsize [only if extract2_downscale]"),
)

SPLIT_OPTIONS = (  # 1744-1750; added only if do_class2d or do_class3d (1742)
    ("OR select from particles.star:", "extract_job + 'particles.star'"),
    ("OR: split into subsets?", "'Yes'"),
    ("OR: number of subsets: ", "-1"),
    ("Subset size: ", "batch_size"),
)

SPLIT2_OPTIONS = (  # 1744-1746, 1754; only if do_class2d_pass2 or do_class3d_pass2 (1742)
    ("OR select from particles.star:", "extract2_job + 'particles.star'"),
    ("OR: split into subsets?", "'Yes'"),
    ("OR: number of subsets: ", "-1"),
    ("Subset size: ", "batch_size_pass2"),
)

DISCARD_OPTIONS = (  # 1834-1837; only if do_discard_on_image_statistics (1831)
    ("OR select from particles.star:", "the batch file split_job/particles_split<N>.star"),
    ("OR: select on image statistics?", "'Yes'"),
    ("Sigma-value for discarding images:", "discard_sigma"),
    ("Metadata label for images:", "rlnImageName"),
)

# The same list in both passes (class2d_job_batch_NNN, class2d_pass2_job_batch_NNN).
CLASS2D_OPTIONS = (  # 1863-1895
    ("Input images STAR file:",
     "the batch file, or discard job + 'particles.star' when discarding"),
    ("Number of classes:", "class2d_nr_classes"),
    ("Mask diameter (A):", "mask_diameter"),
    ("Number of iterations:", "class2d_nr_iter"),
    ("Angular search range - psi (deg):", "class2d_angle_step"),
    ("Offset search range (pix):", "class2d_offset_range"),
    ("Offset search step (pix):", "class2d_offset_step"),
    ("Number of pooled particles:", "refine_nr_pool"),
    ("Which GPUs to use:", "refine_gpu"),
    ("Number of MPI procs:", "refine_mpi"),
    ("Number of threads:", "refine_threads"),
    ("Copy particles to scratch directory:", "refine_scratch_disk"),
    ("Additional arguments:", "class2d_other_args"),
    ("Use fast subsets (for large data sets)?",
     "'Yes' if batch size > refine_batchsize_for_fast_subsets else 'No'"),
    ("Use GPU acceleration?", "'Yes' if refine_do_gpu else 'No'"),
    ("Ignore CTFs until first peak?", "'Yes' if class2d_ctf_ign1stpeak else 'No'"),
    ("Pre-read all particles into RAM?", "'Yes' if refine_preread_images else 'No'"),
)

INIMODEL_OPTIONS = (  # 1923-1969 (pass 1 only)
    ("Input images STAR file:", "batch 1's file (or its discard output)"),
    ("Symmetry:", "symmetry"),
    ("Mask diameter (A):", "mask_diameter"),
    ("Number of classes:", "inimodel_nr_classes"),
    ("Initial angular sampling:", "inimodel_angle_step"),
    ("Offset search range (pix):", "inimodel_offset_range"),
    ("Offset search step (pix):", "inimodel_offset_step"),
    ("Number of initial iterations:", "inimodel_nr_iter_initial"),
    ("Number of in-between iterations:", "inimodel_nr_iter_inbetween"),
    ("Number of final iterations:", "inimodel_nr_iter_final"),
    ("Write-out frequency (iter):", "inimodel_freq_writeout"),
    ("Initial resolution (A):", "inimodel_resol_ini"),
    ("Final resolution (A):", "inimodel_resol_final"),
    ("Initial mini-batch size:", "inimodel_batchsize_ini"),
    ("Final mini-batch size:", "inimodel_batchsize_final"),
    ("Increased noise variance half-life:", "inimodel_sigmafudge_halflife"),
    ("Number of pooled particles:", "1 (fixed; not refine_nr_pool)"),
    ("Which GPUs to use:", "refine_gpu"),
    ("Number of MPI procs:", "refine_mpi"),
    ("Number of threads:", "refine_threads"),
    ("Copy particles to scratch directory:", "refine_scratch_disk"),
    ("Additional arguments:", "inimodel_other_args"),
    ("Flatten and enforce non-negative solvent?", "'Yes' if inimodel_solvent_flatten else 'No'"),
    ("Skip padding?", "'Yes' if refine_skip_padding else 'No'"),
    ("Use GPU acceleration?", "'Yes' if refine_do_gpu else 'No'"),
    ("Ignore CTFs until first peak?", "'Yes' if inimodel_ctf_ign1stpeak else 'No'"),
    ("Pre-read all particles into RAM?", "'Yes' if refine_preread_images else 'No'"),
)

# The same list in both passes (class3d_job_batch_NNN, class3d2_job_batch_NNN).
CLASS3D_OPTIONS = (  # 2001-2053
    ("Input images STAR file:", "the batch file (or its discard output)"),
    ("Reference map:",
     ("class3d_reference (pass 1 without a reference: InitialModel's best class; pass 2: "
      "best pass-1 Class3D class, or its '_rescaled.mrc' copy)")),
    ("Initial low-pass filter (A):", "class3d_ini_lowpass"),
    ("Symmetry:", "symmetry"),
    ("Regularisation parameter T:", "class3d_T_value"),
    ("Reference mask (optional):", "class3d_reference_mask"),
    ("Number of classes:", "class3d_nr_classes"),
    ("Mask diameter (A):", "mask_diameter"),
    ("Number of iterations:", "class3d_nr_iter"),
    ("Angular sampling interval:", "class3d_angle_step"),
    ("Offset search range (pix):", "class3d_offset_range"),
    ("Offset search step (pix):", "class3d_offset_step"),
    ("Number of pooled particles:", "refine_nr_pool"),
    ("Which GPUs to use:", "refine_gpu"),
    ("Number of MPI procs:", "refine_mpi"),
    ("Number of threads:", "refine_threads"),
    ("Copy particles to scratch directory:", "refine_scratch_disk"),
    ("Additional arguments:", "class3d_other_args"),
    ("Use fast subsets (for large data sets)?",
     "'Yes' if batch size > refine_batchsize_for_fast_subsets else 'No'"),
    ("Ref. map is on absolute greyscale?", "'Yes' if class3d_ref_is_correct_greyscale else 'No'"),
    ("Has reference been CTF-corrected?", "'Yes' if class3d_ref_is_ctf_corrected else 'No'"),
    ("Skip padding?", "'Yes' if refine_skip_padding else 'No'"),
    ("Use GPU acceleration?", "'Yes' if refine_do_gpu else 'No'"),
    ("Ignore CTFs until first peak?", "'Yes' if class3d_ctf_ign1stpeak else 'No'"),
    ("Pre-read all particles into RAM?", "'Yes' if refine_preread_images else 'No'"),
)

JOB_OPTIONS = {
    "import": IMPORT_OPTIONS,
    "motioncorr": MOTIONCORR_OPTIONS,
    "ctffind": CTFFIND_OPTIONS,
    "autopick": AUTOPICK_OPTIONS,  # pass 1: LoG unless a 3D reference was given
    "autopick2": AUTOPICK_OPTIONS,  # pass 2: reference-based, see the note above the list
    "extract": EXTRACT_OPTIONS,
    "extract2": EXTRACT2_OPTIONS,
    "split": SPLIT_OPTIONS,
    "split2": SPLIT2_OPTIONS,
    "discard": DISCARD_OPTIONS,
    "discard2": DISCARD_OPTIONS,
    "class2d": CLASS2D_OPTIONS,
    "class2d_pass2": CLASS2D_OPTIONS,
    "inimodel": INIMODEL_OPTIONS,
    "class3d": CLASS3D_OPTIONS,
    "class3d2": CLASS3D_OPTIONS,
}

# Appended to a job's options when its *_submit_to_queue option is True (1504-1508).
QUEUE_OPTIONS = (
    ("Submit to queue?", "'Yes'"),
    ("Queue name: ", "queue_name"),
    ("Queue submit command:", "queue_submit_command"),
    ("Standard submission script:", "queue_submission_template"),
    ("Minimum dedicated cores per node:", "queue_minimum_dedicated"),
)
SUBMIT_TO_QUEUE_OPTION = {  # job -> the option that appends QUEUE_OPTIONS
    "motioncorr": "motioncor_submit_to_queue",  # 1590
    "ctffind": "ctffind_submit_to_queue",  # 1636
    "autopick": "autopick_submit_to_queue",  # 1700
    "autopick2": "autopick_submit_to_queue",
    "extract": "extract_submit_to_queue",  # 1729
    "extract2": "extract_submit_to_queue",
    "discard": "discard_submit_to_queue",  # 1844
    "discard2": "discard_submit_to_queue",
    "class2d": "refine_submit_to_queue",  # 1897
    "class2d_pass2": "refine_submit_to_queue",
    "inimodel": "refine_submit_to_queue",  # 1971
    "class3d": "refine_submit_to_queue",  # 2055
    "class3d2": "refine_submit_to_queue",
    # Import and the split Select job never go to a queue.
}

# Where MPI processes and threads come from, per job ("Number of MPI procs:" / "Number of
# threads:"). Jobs missing a key get RELION's job default (1).
PARALLEL_OPTIONS = {
    "motioncorr": {"Number of MPI procs:": "motioncor_mpi",  # 1578
                   "Number of threads:": "motioncor_threads"},  # 1577
    "ctffind": {"Number of MPI procs:": "ctffind_mpi"},  # 1607
    "autopick": {"Number of MPI procs:": "autopick_mpi"},  # 1668
    "extract": {"Number of MPI procs:": "extract_mpi"},  # 1718
    "class2d": {"Number of MPI procs:": "refine_mpi",  # 1872
                "Number of threads:": "refine_threads"},  # 1873
    "inimodel": {"Number of MPI procs:": "refine_mpi",  # 1941
                 "Number of threads:": "refine_threads"},  # 1942
    "class3d": {"Number of MPI procs:": "refine_mpi",  # 2015
                "Number of threads:": "refine_threads"},  # 2016
}

# ---------------------------------------------------------------------------------------------
# Scheduling: relion_pipeliner --schedule NAME --repeat R --min_wait W --RunJobs "job job " &
# (1381-1389). Each job name is followed by a blank; relion_it passes no --sec_wait_after, so
# RELION's default of 10 s after each job applies (src/apps/pipeliner.cpp:68 at 3.1.3); the
# command ends in '&', so the pipeliner runs in the background.
SCHEDULES = {  # schedule name -> (--repeat, --min_wait in minutes)
    "PREPROCESS": ("preprocess_repeat_times", "preprocess_repeat_wait"),  # 284, 1767
    "PREPROCESS_PASS2": ("preprocess_repeat_times", "preprocess_repeat_wait"),  # 285, 1767
    "DISCARD": (1, 1),  # 1851
    "CLASS2D": (1, 1),  # 1911
    "INIMODEL": (1, 1),  # 1978
    "CLASS3D": (1, 1),  # 2069
}
# PREPROCESS runs, in this order: import_job, motioncorr_job (if movies), ctffind_job, and unless
# stop_after_ctf_estimation: autopick, extract, and the split job when classifying (1641-1760).
PIPELINER_SEC_WAIT_AFTER = None  # not passed (RELION default 10)
WAIT_FOR_JOB_SECONDS = 30  # WaitForJob(job, 30): sleep, then poll default_pipeline.star (1391-1411)
WAIT_FOR_JOB_DONE_STATUS = 2  # rlnPipeLineProcessStatus 2 = finished successfully (1406)

# ---------------------------------------------------------------------------------------------
# "Calculate for me" (relion_it's GUI only: run_pipeline itself never derives these). The GUI
# box is ticked by default (852); the values are recomputed whenever angpix or the longest
# diameter changes (1002-1035).
CALCULATE_FOR_ME = {
    # 1011: mask 10 % wider than the particle's longest diameter, in Å
    "mask_diameter": "1.1 * autopick_LoG_diam_max",
    # 950-954, 1015-1016: box 20 % larger than the particle, in pixels, rounded up to even
    "extract_boxsize": "b = ceil(1.2 * autopick_LoG_diam_max / angpix); b + b % 2",
    # 956-967, 1019: smallest listed size whose pixel size is below 4.25 Å (Nyquist better than
    # 8.5 Å); never larger than the box itself; an error text if the box is too large
    "extract_small_boxsize": (
        "for s in DOWNSCALE_BOX_SIZES: if s > extract_boxsize: return extract_boxsize; "
        "if angpix * extract_boxsize / s < 4.25: return s; else 'Box size is too large!'"
    ),
}
DOWNSCALE_BOX_SIZES = (48, 64, 96, 128, 160, 192, 256, 288, 300, 320, 360,
                       384, 400, 420, 450, 480, 512, 640, 768, 896, 1024)  # 957-958
DOWNSCALE_MAX_ANGPIX = 4.25  # 964
# Set whenever the GUI saves (fetch_options_from_gui, 1170-1174), ticked box or not:
GUI_SAVE_SETS = {
    "extract_downscale": True,
    "extract2_downscale": True,
    "extract2_small_boxsize": "extract_small_boxsize",
}
# calculate_full_options (1192-1216), run when the GUI saves:
GUI_FULL_OPTIONS = {
    "with a 3D reference": {
        "autopick_do_LoG": False,
        "autopick_refs_min_distance": "0.7 * autopick_LoG_diam_max",
        "class3d_reference": "autopick_3dreference",
        "do_second_pass": False,
        # have_3d_reference is NOT set here, so run_pipeline still makes an InitialModel (1921)
    },
    "without": {"autopick_do_LoG": True, "class3d_reference": ""},
    "batch_size": "10000 if do_second_pass else 100000 (batch_size_pass2 stays 100000)",
}

# relion_it's GUI fields (label -> option). Labels use Å (U+212B) and the like as the GUI does.
GUI_FIELDS = {
    "Voltage (kV):": "voltage",  # 749
    "Cs (mm):": "Cs",  # 756
    "Phase plate?": "ctffind_do_phaseshift",  # 763
    "Pixel size (\u212b):": "angpix",  # 772
    "Exposure rate (e\u207b / \u212b\u00b2 / frame):": "motioncor_doseperframe",  # 780
    "Longest diameter (\u212b):": "autopick_LoG_diam_max",  # 793
    "Shortest diameter (\u212b):": "autopick_LoG_diam_min",  # 801
    "3D reference (optional):": "autopick_3dreference",  # 808
    "Mask diameter (\u212b):": "mask_diameter",  # 818
    "Box size (px):": "extract_boxsize",  # 828
    "Down-sample to (px):": "extract_small_boxsize",  # 838
    "Calculate for me:": None,  # 848, no option of its own
    "Pattern for movies:": "import_images",  # 867
    "Gain reference (optional):": "motioncor_gainreference",  # 879
    "Stop after CTF estimation?": "stop_after_ctf_estimation",  # 895
    "Do 2D classification?": "do_class2d",  # 904
    "Do 3D classification?": "do_class3d",  # 913
    "Do second pass? (only if no 3D ref)": "do_second_pass",  # 922
    "Do 2D classification (2nd pass)?": "do_class2d_pass2",  # 931
    "Do 3D classification (2nd pass)?": "do_class3d_pass2",  # 941
}

# ---------------------------------------------------------------------------------------------
# run_pipeline's pass, batch and discard rules (1473-2115), each: comment -> formula.
PIPELINE_RULES = {
    # 1511-1514
    "stop after CTF turns off the rest":
        "if stop_after_ctf_estimation: do_class2d = do_class3d = do_second_pass = False",
    # 1516-1519
    "number of passes": "2 if do_second_pass else 1",
    # 1522-1539
    "restart straight into pass 2":
        "if do_second_pass and RELION_IT_2NDPASS_3DREF exists: start at pass 2 with "
        "autopick_3dreference = class3d_reference = its first line, autopick_ref_angpix = its "
        "second line, autopick_2dreferences = '', autopick_do_LoG = False, "
        "have_3d_reference = True",
    # 1742, 1775
    "split and batch loop only when classifying":
        "pass 1: do_class2d or do_class3d; pass 2: do_class2d_pass2 or do_class3d_pass2",
    # 1750, 1754, 1746
    "batch (subset) size":
        "split_job: batch_size; split2_job: batch_size_pass2; number of subsets -1 (all)",
    # 1812, 1413-1419
    "batches seen": "len(glob(split_job + 'particles_split*.star')); batch N's file is "
                    "particles_split<N>.star with N zero-padded to any width 0..5",
    # 1800-1806
    "batch 1 size on restart":
        "previous_batch1_size = rows of batch 1 if class2d_job_batch_001 is recorded and the "
        "file exists, else 0",
    # 1820-1822
    "re-run batch 1 while it grows":
        "rerun_batch1 = N == 1 and size > previous_batch1_size and size > minimum_batch_size",
    # 1827 (note: compares with batch_size in pass 2 too, not batch_size_pass2)
    "discard and Class2D run on a batch when":
        "rerun_batch1 or size == batch_size",
    # 1831-1857
    "discard on image statistics":
        "if do_discard_on_image_statistics: Select job (discard_job / discard2_job), "
        "sigma discard_sigma on rlnImageName; Class2D/3D then read its particles.star",
    # 1861
    "Class2D in this pass": "pass 1: do_class2d; pass 2: do_class2d_pass2",
    # 1877, 2020
    "fast subsets": "batch size > refine_batchsize_for_fast_subsets",
    # 1909, 2067 (1976 for InitialModel: only when newly added)
    "(re)run a classification job": "not already in RELION_IT_SUBMITTED_JOBS, or rerun_batch1",
    # 1918 (outside the 'size == batch_size' test: a batch still filling can get its Class3D)
    "Class3D in this pass": "pass 1: do_class3d; pass 2: do_class3d_pass2; needs "
                            "have_3d_reference",
    # 1921
    "InitialModel":
        "not have_3d_reference and pass 1 and batch 1 and size == batch_size",
    # 1443-1458, 1992, 2081
    "best class":
        "lowest rlnEstimatedResolution, ties -> larger rlnClassDistribution (use_resol=True)",
    # 2084-2109
    "move on to pass 2":
        "pass 1 and do_second_pass and batch 1 and best Class3D resolution < "
        "minimum_resolution_3dref_2ndpass: take that class as the reference, remove "
        "RUNNING_PIPELINER_PREPROCESS, write RELION_IT_2NDPASS_3DREF (class, pixel size)",
    # 1779-1793
    "rescale the reference in pass 2":
        "if extract_downscale or extract2_downscale: p = angpix * motioncor_binning (movies) "
        "* (extract_boxsize / extract2_small_boxsize if extract2_downscale); if "
        "|p - autopick_ref_angpix| > 0.01: relion_image_handler --rescale_angpix p --new_box "
        "(extract2_small_boxsize or extract_boxsize) -> '<ref>_rescaled.mrc'",
    # 2112-2115
    "idle batch loop": "if no new batch: check RUNNING_RELION_IT, sleep 60 * batch_repeat_time s",
    # 1496-1501
    "manual-pick GUI particle diameter":
        "autopick_LoG_diam_min if autopick_do_LoG else autopick_refs_min_distance",
}

# ---------------------------------------------------------------------------------------------
# Start, stop and restart (line numbers in relion_it.py unless named).
LIFECYCLE = {
    "refuses to start":  # 2151-2159, exit(0)
        "if RUNNING_RELION_IT, RUNNING_PIPELINER_PREPROCESS or RUNNING_PIPELINER_PREPROCESS_PASS2 "
        "exists",
    "--continue":  # 2131-2132, 2161-2163
        "appends ./relion_it_options.py to the option files (read last, so it wins)",
    "option files":  # 2165-2169, 647-661
        "each runpy-run in order; unknown names print 'Unrecognised option' and are skipped",
    "job reuse":  # 1337-1350, 1352-1379
        "addJob looks the name up in RELION_IT_SUBMITTED_JOBS: the FIRST line whose first word "
        "is the name (lines with < 3 words skipped) gives the job (third word); otherwise "
        "--addJob, then the last process of default_pipeline.star is the new job and a line is "
        "appended",
    "stop relion_it":  # 1322-1325, 1410, 2113
        "delete RUNNING_RELION_IT; checked only while waiting for a job and in an idle batch "
        "loop; running pipeliners carry on",
    "stop a pipeliner":  # 140-141; src/pipeliner.cpp:813-818, 892
        "delete RUNNING_PIPELINER_<schedule>; the pipeliner creates and checks it only when "
        "--repeat > 1 (so only PREPROCESS / PREPROCESS_PASS2)",
    "end of pass 1":  # 2094-2097
        "relion_it itself removes RUNNING_PIPELINER_PREPROCESS",
    "no classification":  # 1767-1775
        "run_pipeline returns after starting PREPROCESS in the background; RUNNING_RELION_IT "
        "is left behind (a later start refuses until it is removed)",
    "failed job":  # 1391-1411
        "WaitForJob waits for status 2 only: a failed Class2D/3D/InitialModel is waited for "
        "until RUNNING_RELION_IT is removed",
}

# ---------------------------------------------------------------------------------------------
# Related RELION 3.1.3 facts outside relion_it.py (file:line at tag 3.1.3).
RELION_3_1_3_FACTS = {
    "pipeliner --sec_wait_after default": (10, "src/apps/pipeliner.cpp:68"),
    "pipeliner --min_wait unit": ("minutes, read as an integer", "src/apps/pipeliner.cpp:66"),
    "MotionCorr 'EER fractionation:' job default": (32, "src/pipeline_jobs.cpp:1286,1389"),
    "relion_run_motioncorr --eer_grouping default": (40, "src/motioncorr_runner.cpp:92"),
    "relion_run_motioncorr --eer_upsampling default": (1, "src/motioncorr_runner.cpp:93"),
    "relion_run_motioncorr --ps_size default": (512, "src/motioncorr_runner.cpp:87"),
    "'Sum power spectra every e/A2:' job default": (4, "src/pipeline_jobs.cpp:1325"),
    "--grouping_for_ps": ("round(4 / dose per frame), at least 1", "src/pipeline_jobs.cpp:1434-1461"),
    "'Additional arguments:' goes last on the command line": (True, "src/pipeline_jobs.cpp:1468"),
    "a repeated command-line option": ("the last one wins, with a warning", "src/args.cpp:227-246"),
    "CtfFind with --use_given_ps": (
        ("CTFFIND gets the _PS.mrc with --amplitude-spectrum-input and its box is the "
         "spectrum's size (512 by default), not 'FFT box size (pix):'"),
        "src/pipeline_jobs.cpp:1614-1616; src/ctffind_runner.cpp:725-737",
    ),
    "--use_given_ps without power spectra": (
        "error: no rlnCtfPowerSpectrum label in the input STAR file",
        "src/ctffind_runner.cpp:155-156",
    ),
    "label matching in --addJobOptions": (
        ("label = text up to one character before '==', value = text from three characters "
         "after it; exact match"),
        "src/pipeline_jobs.cpp:304-325",
    ),
}
