"""Framework-free source of truth: architecture presets, canonical names, data presets."""
