"""ThemisDB: a document database with a verifiable security posture."""

__version__ = "0.1.0"
