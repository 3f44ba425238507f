"""Datasets: loaders, on-disk formats, pixel scaling, subsets."""
