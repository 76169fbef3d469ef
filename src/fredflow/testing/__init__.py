"""Hooks for fredflow's own tests (named kill and failure points). Never active unless a test sets them."""
