"""dnalm.recipes."""
