"""Wire-level helpers shared by every service: the chunk clock, chunk headers, proto code generation."""
