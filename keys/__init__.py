"""The federation CA, member certificates and key files."""
