"""Reports and figures: result tables, the per-class charts and episode figures, the ablation's generated tables."""
