"""advdissect: Network Dissection of CNNs on clean and adversarial images."""

__version__ = "0.1.0"
