"""Datasets in the CS231n COCO captioning on-disk format: the format itself, the embedded
shapes dataset, the fixed feature extractor and the COCO fetcher."""
