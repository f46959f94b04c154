"""The offline side: demo data, datasets from outcomes, LightGBM training, evaluation, registry."""
