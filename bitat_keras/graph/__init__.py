"""A user's model as a graph: its structure and checks, the plan of what is binarized, input
thresholds, float32 policies, and ``binarize`` (eligible convs become binary convs)."""
