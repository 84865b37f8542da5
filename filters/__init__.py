"""Clip filters: each computes scores for a clip and, against configured thresholds, a rejection reason.

- ``cheap``: duration, audio presence and level, face checks; run before any model.
- ``syncnet``: lip-sync offset, Sync-C and Sync-D as syncnet_python computes them.
- ``quality``: no-reference visual quality through pyiqa (Q-Align or a lighter metric).
- ``head_motion``: excessive head motion from the extracted pose and translation.

Scores are always recorded, kept or not, so clips can be re-thresholded later without re-running models.
"""
