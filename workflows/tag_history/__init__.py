"""Tag history rebuilds: RebuildTagHistory's long-running operation, one workflow per request that
recomputes each dimension at each past instant, in order, through tagging's RecomputeTags(as_of)."""
