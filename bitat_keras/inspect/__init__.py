"""Reading a binary model and a run: summary (parameters, memory, MACs), analysis (per-layer
agreement, principal noise) and callbacks (sign-flip rates)."""
