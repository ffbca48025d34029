// strata — placeholder until the pool CLI lands.
print("strata: not built yet")
