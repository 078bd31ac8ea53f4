"""Networks, losses, the training loop and evaluation."""
