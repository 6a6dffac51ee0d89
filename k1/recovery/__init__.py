"""Error recovery: retry policy, error classification, circuit breakers, dead letters."""
