"""Morphometry and quality control of structural MRI: tissue maps, masks, image-quality metrics, TIV,
FreeSurfer stats files, group tables with head-size corrections and flags, and the visual QC report.

    from segsuite.morphometry.subject import compute_morphometry, write_morphometry
    from segsuite.morphometry.group import build_group_tables
"""
