"""dnalm.evaluate."""
