"""Keras building blocks of a binary network: quantizers (Q, the sign and its straight-through
gradient), the binary conv and ReActNet layers, the weight-clip constraint and the
regularizers of Eq. 13."""
