"""Offline demo: a generated corpus and a run of ESPnet's stock ASR entry points."""
