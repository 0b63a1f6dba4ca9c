class TrainerInputError(Exception):
    """Bad input to the trainer: reported in one line, exit status 2, nothing logged as a model."""
