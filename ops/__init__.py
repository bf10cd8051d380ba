"""Operations tooling: scaling simulator, workload generator, capacity model, cluster readers."""
