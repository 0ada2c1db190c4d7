"""What luxc says to the user, in the user's terms: a leaf's name (``parameters['w']``),
warnings that point at the user's line, and text from a file someone else wrote made safe to
print. Internal: nothing here is public."""

__all__: list[str] = []
