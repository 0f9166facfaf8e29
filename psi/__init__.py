"""Protocol cores: identifiers, keyed-hash and ECDH PSI, transcripts. Pure: no I/O, no gRPC."""
