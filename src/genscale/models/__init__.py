"""Model families. Each family module exposes a builder; `build_gan` is the only one so far."""
