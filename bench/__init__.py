"""Benchmark harness comparing s3spool with s5cmd, rclone and the aws cli.

Run it as ``python -m bench``; see bench/README.md.
"""
