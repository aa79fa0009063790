"""dnalm.models."""
