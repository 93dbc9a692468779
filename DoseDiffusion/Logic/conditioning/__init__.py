"""From a Case to model inputs and back: beam and angle plates, modality channels, crop and paste-back."""
