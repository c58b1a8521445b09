"""Networks: architectures and weights, the device, losses, adversarial attacks and training."""
