"""One sub-package per workload, each with config.py, data.py, model.py and workload.py."""
