"""`nag bench`: what NAG costs — the combine operator alone, and the denoiser step per family."""
