"""Tamper-evident protocol logs: append, verify, reconcile, report."""
