"""LivePortrait's networks, module trees matching the official checkpoints key for key."""
