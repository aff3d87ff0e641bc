"""Tools that build and examine the built-in synthetic world: pretraining its tiny CLIP, calibration, probes."""
