"""Hydra configs shipped with dnalm (a package so that wheels carry them)."""
