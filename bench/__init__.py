"""`make bench`: qmsflow's throughput beside the baselines that bound it, measured in one run."""
