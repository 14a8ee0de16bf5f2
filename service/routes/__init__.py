"""HTTP routes: each parses, calls one function of the core, returns a schema."""
