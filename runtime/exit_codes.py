"""Process exit codes shared by pyimgano-train, pyimgano-export and pyimgano-infer (docs/EXIT_CODES.md)."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INPUT_ERRORS = 1
    USAGE = 2
    BUNDLE_REFUSED = 3
    PARITY_REFUSED = 4
    DATA_ERROR = 5
    RECIPE_PLACEHOLDER = 6
    OUTPUT_ERROR = 7
    # The shell's 128 + signal number.
    INTERRUPTED = 130
    TERMINATED = 143


DESCRIPTIONS = {
    ExitCode.OK: "Everything asked for was done.",
    ExitCode.INPUT_ERRORS: "pyimgano-infer: at least one input could not be read or scored (its record has "
    "`error`); every other input was processed and written.",
    ExitCode.USAGE: "Bad flags or a bad config (unknown key, wrong type, value out of range), an unavailable "
    "device (e.g. `cuda` where there is none), no input matched, or an output that exists without `--overwrite` or "
    "`--resume`. Click's own usage errors use 2 as well.",
    ExitCode.BUNDLE_REFUSED: "pyimgano-infer: the bundle failed verification (a file's sha256 or size, the "
    "manifest schema, or an unsupported `format_version`); the message names the file.",
    ExitCode.PARITY_REFUSED: "pyimgano-export / pyimgano-train --export-bundle: the ONNX graph and the torch model "
    "disagree beyond 1e-3 relative on held-out images; no bundle was written.",
    ExitCode.DATA_ERROR: "A dataset, training image, weights file, checkpoint or run directory the job needs is "
    "missing or unreadable; the message names it (for missing weights: the exact file and folder).",
    ExitCode.RECIPE_PLACEHOLDER: "pyimgano-train: the recipe is a placeholder (`anomalib-train`); the message says "
    "what to do instead. Nothing was trained.",
    ExitCode.OUTPUT_ERROR: "pyimgano-infer: an output could not be written (a missing folder, a full disk, no permission, "
    "another run holding the file); the message names it. Every record written before it is complete, and "
    "`--resume` continues after them.",
    ExitCode.INTERRUPTED: "pyimgano-infer: stopped by SIGINT (Ctrl-C) after the chunk in hand; its records and the summary "
    "(`interrupted`) were written.",
    ExitCode.TERMINATED: "pyimgano-infer: stopped by SIGTERM after the chunk in hand; its records and the summary "
    "(`interrupted`) were written.",
}
