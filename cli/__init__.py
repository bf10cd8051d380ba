"""The `condo-audit` command line."""
