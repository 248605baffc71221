"""ScalingFilter: perplexity-difference data filtering and semantic diversity."""
