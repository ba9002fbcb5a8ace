"""Datasets, their catalog, and the data path from files to model inputs."""
from .catalog import DatasetCatalog, Metadata, MetadataCatalog

__all__ = ["DatasetCatalog", "Metadata", "MetadataCatalog"]
