"""Unit ablation study library: image world, models, training, extraction and analysis."""
