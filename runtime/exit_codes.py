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
    ExitCode.OK: "Everything asked for was done. pyimgano-serve: stopped by SIGTERM or SIGINT after the requests in "
    "flight were answered.",
    ExitCode.INPUT_ERRORS: "pyimgano-infer: at least one input could not be read or scored (its record has "
    "`error`); every other input was processed and written.",
    ExitCode.USAGE: "Bad flags or a bad config (unknown key, wrong type, value out of range), an unavailable "
    "device (e.g. `cuda` where there is none), a key or trusted-keys file that cannot be used (or the `signing` extra "
    "not installed), report.html asked for without the `report` extra (matplotlib), a model whose package is not installed "
    "(`anomalib` for vision_*_anomalib, `timm` for vision_anomalib_checkpoint), no input matched, or an output that exists without `--overwrite` or "
    "`--resume`; for `pyimgano-export --format triton`, a version Triton cannot use (not a positive integer), a "
    "version folder that exists, or a model whose config.pbtxt describes other tensors (nothing is written). "
    "For `pyimgano-serve`: a --host/--port it cannot listen on, or an unusable token (checked before any model is "
    "opened). Click's own usage errors use 2 as well.",
    ExitCode.BUNDLE_REFUSED: "pyimgano-infer, pyimgano-sign: the bundle failed verification (a file's sha256 or "
    "size, a file in it that the manifest does not list, the manifest schema, or an unsupported `format_version`), "
    "or trusted keys were given and its signature does not hold (unsigned, signed by a key not trusted, a signature "
    "that does not verify, or a manifest changed after signing); the message names the file, or the bundle and "
    "the key_id.",
    ExitCode.PARITY_REFUSED: "pyimgano-export / pyimgano-train --export-bundle: the ONNX graph and the torch model "
    "disagree beyond 1e-3 relative on held-out images; no bundle was written.",
    ExitCode.DATA_ERROR: "A dataset, training image, weights file, checkpoint or run directory the job needs is "
    "missing or unreadable, or a run file that does not match the digest the run recorded (changed by hand, or left "
    "by another training); the message names it (for missing weights: the exact file and folder).",
    ExitCode.RECIPE_PLACEHOLDER: "pyimgano-train: the recipe is a placeholder (`anomalib-train`); the message says "
    "what to do instead. Nothing was trained.",
    ExitCode.OUTPUT_ERROR: "pyimgano-infer: an output could not be written (a missing folder, a full disk, no permission, "
    "another run holding the file); the message names it. Every record written before it is complete, and "
    "`--resume` continues after them. pyimgano-train: another pyimgano-train is writing the same run directory "
    "(nothing was trained; the run directory is as it was).",
    ExitCode.INTERRUPTED: "pyimgano-infer: stopped by SIGINT (Ctrl-C) after the chunk in hand; its records and the summary "
    "(`interrupted`) were written.",
    ExitCode.TERMINATED: "pyimgano-infer: stopped by SIGTERM after the chunk in hand; its records and the summary "
    "(`interrupted`) were written.",
}
