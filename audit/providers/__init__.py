"""External providers: CNPJ registries and Pluggy bank transactions."""
