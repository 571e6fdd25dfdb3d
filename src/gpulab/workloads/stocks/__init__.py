"""S&P 500 one-minute-ahead prediction from its constituents (the study's stock network)."""
