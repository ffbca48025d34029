print("strata-perf: under construction")
