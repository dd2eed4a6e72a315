"""Ready-made networks: ReActNet-A's MobileNetV1 (binary and full-precision twin)."""
