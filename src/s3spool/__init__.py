"""s3spool: drain Unix spool directories into S3."""

__version__ = "0.1.0"
