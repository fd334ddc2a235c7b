"""What the registry sends: hashing aside, media types, sources and verified files."""
