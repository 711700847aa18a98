"""Gaussian splat files in every common format, in one frame.

Submodules: ``frame`` (the LGM <-> 3DGS frame conversion). File readers and writers follow.
"""
