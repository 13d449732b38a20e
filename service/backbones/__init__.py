"""The backbones as serving scores them: a user's candidates from the exported artefacts and the
user's live history, the same code evaluation runs (`training` imports it, never the reverse)."""
