"""Runners: the local cloak pipeline, archive migration, and the Ray runner (the only module importing ray)."""
