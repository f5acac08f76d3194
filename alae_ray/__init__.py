"""alae-ray."""
