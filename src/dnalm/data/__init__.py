"""dnalm.data."""
