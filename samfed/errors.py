"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class SamfedError(Exception):
    """An error the user can fix (bad path, corrupt file, wrong model file, ...).

    The message must be one self-contained sentence that says what is wrong and what is expected.
    """

    exit_code: int = 2
