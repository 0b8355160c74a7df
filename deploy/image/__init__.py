"""The daemonless, reproducible builder of the Portcullis OCI images (``make image``; CLI: build.py)."""
