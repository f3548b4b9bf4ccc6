"""Datasets in the CS231n COCO captioning on-disk format: the format itself, the embedded
shapes dataset, the encoder record and PCA of a data set's features, data sets from folders
of pictures, streamed and sharded feature extraction, and the COCO fetcher."""
