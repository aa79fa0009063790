"""dnalm.training."""
