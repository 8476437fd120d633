"""Measures of what pretrained features know: anatomy/sequence separation on held-out subjects."""
