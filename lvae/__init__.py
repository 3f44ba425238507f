"""lvae: a reproduction of Ladder Variational Autoencoders (Sønderby et al., NIPS 2016)."""

__version__ = "0.1.0"
