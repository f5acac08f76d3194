"""Applications built on alae_ray (the Gradio UI)."""
