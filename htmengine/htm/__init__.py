"""Pure HTM library: encoders, spatial pooler, backtracking TM, anomaly likelihood. No I/O."""
