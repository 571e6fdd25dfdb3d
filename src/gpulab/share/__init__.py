"""Several jobs on one device: isolated vs shared runs, NP, STP, ANTT, fairness, reports."""
