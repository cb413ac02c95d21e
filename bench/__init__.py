"""Load drivers and the side-by-side benchmark (`python -m bench`)."""
