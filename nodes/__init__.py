"""The department node: gRPC server over mutual TLS answering PSI queries on local match sets."""
