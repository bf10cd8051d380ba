"""A stand-in for the external providers: CNPJ.ws, minha-receita and Pluggy.

A real HTTP server with the providers' paths and response shapes, deterministic data,
rate limits and faults, and counters of what it served. Local runs, tests and load tests
point the platform at it instead of the real providers.
"""
