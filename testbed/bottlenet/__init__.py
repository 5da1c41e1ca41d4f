"""BottleNet/BottleNet++-style learned bottleneck at a split point: `model` holds the
networks, `train` the command that fits them to a plugin's frozen model."""
