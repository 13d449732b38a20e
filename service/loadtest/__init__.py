"""`make bench`: load tests of the running stack and the paper-style baseline, -> reports/bench.json."""
