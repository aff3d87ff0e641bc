"""Experiment tools built on the package: pretraining the built-in tiny CLIP, calibrating the built-in world, its probes, and exporting it as a user dataset."""
