"""dnalm.genome."""
