# Shim for setuptools; the metadata lives in pyproject.toml.  This is where the .pth file that
# auto-loads sgl_patch from SGL_* environment variables will be installed.
from setuptools import setup

setup()
