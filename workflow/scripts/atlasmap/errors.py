"""The error users see when their input is at fault."""


class AtlasmapInputError(ValueError):
    """Bad input: the message names the file, column or key at fault."""
