"""Gallery commands: enroll, identify, subjects (registered on the main app)."""
