"""Deployment artefacts; ``deploy.image`` builds the container images (see deploy/image/build.py)."""
