"""The one error a user's file can raise, shared by every decoder (so they need not import each other)."""


class ImageError(ValueError):
    """A file that cannot be analysed; the message says why, for the user."""
