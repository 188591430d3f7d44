"""Helpers shared by every stage: hardware-aware precision, safe file writes."""
