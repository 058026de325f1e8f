"""Training for latentgraph's diffusion models: the procedural demo dataset, the pixel classifier that checks it,
the from-scratch demo model and user LoRA fine-tuning."""
