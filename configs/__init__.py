"""Experiment configs, one per ASRID paper variant."""
