// strata-crash — placeholder until the crash harness CLI lands.
print("strata-crash: not built yet")
