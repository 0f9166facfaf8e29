"""Danger: group operations, hash-to-curve and blinded values. Use the round API in psi instead."""
