"""Reports, reproduce, paired comparisons and the analysis of finished runs."""
