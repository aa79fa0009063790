"""dnalm.inference."""
