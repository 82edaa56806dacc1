"""Process exit codes shared by pyimgano-train, pyimgano-export and pyimgano-infer (docs/EXIT_CODES.md)."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # pyimgano-infer: at least one input could not be read or scored; the others were processed.
    INPUT_ERRORS = 1
    # Bad flags or a bad config (unknown key, wrong type, unavailable device). Click also uses 2.
    USAGE = 2
    # The bundle failed verification (checksum, size, format version, manifest schema).
    BUNDLE_REFUSED = 3
    # pyimgano-export: the ONNX graph disagrees with the torch model beyond tolerance; nothing written.
    PARITY_REFUSED = 4
    # A dataset, image set, weights file or run directory that the job needs is missing or unreadable.
    DATA_ERROR = 5
