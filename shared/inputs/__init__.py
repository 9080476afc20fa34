"""What model inputs are built from and checked with: schema pieces, images, LoRA files, output formats."""
