"""Experiment tools built on the package: calibration of the built-in world, its probes, and exporting it as a user dataset."""
