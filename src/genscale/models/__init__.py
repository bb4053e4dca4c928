"""Networks, one module per kind: gan.py (generators and discriminators), gpt.py (the transformer), vae.py, unet.py.

Each has a PRESETS dict of named sizes; a family (families/<name>.py) says which networks and presets it offers.
"""
