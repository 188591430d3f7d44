"""Retrieval recall (the standard protocol), evaluation of a split, and result grids."""
