"""The civil affairs coordinator: rounds, state, eligibility rules, reports."""
