"""pyimgano-sign: Ed25519 keys, and signing and verifying bundles (docs/BUNDLE.md). torch-free.
Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

from pathlib import Path

import click

from pyimgano.cli.errors import run_program
from pyimgano.cli.log_flags import logging_options
from pyimgano.runtime.bundle import open_bundle, sign_bundle
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.signing import TRUSTED_KEYS_ENV, generate_key_pair, load_private_key, load_trusted_keys

BUNDLE = click.argument("bundle", type=click.Path(exists=True, path_type=Path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@logging_options
def main():
    """Sign bundles so that pyimgano-infer --trusted-keys opens only those a trusted key signed."""


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="DIR/NAME: writes NAME.key (private, PKCS8 PEM, mode 0600) and NAME.pub (an ssh-ed25519 line) "
                   "into DIR; refused if either exists.")
def keygen(out):
    """Make an Ed25519 key pair."""

    def program() -> ExitCode:
        pair = generate_key_pair(out)
        click.echo(f"private key: {pair.private} (keep it secret; it signs bundles)\n"
                   f"public key: {pair.public} (give it to pyimgano-infer --trusted-keys)\nkey_id: {pair.key_id}")
        return ExitCode.OK

    run_program(program)


@main.command()
@BUNDLE
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The private key (NAME.key from keygen).")
def sign(bundle, key_path):
    """Sign BUNDLE (a directory, or a .zip rewritten atomically); replaces an existing signature.

    The bundle must verify first (every listed file's sha256 and size, no unlisted file). The signature
    covers manifest.json's exact bytes: after editing a threshold in it by hand, sign again."""

    def program() -> ExitCode:
        signature = sign_bundle(bundle, load_private_key(key_path))
        click.echo(f"signed: {bundle} ({signature.bundle} version {signature.bundle_version}, manifest sha256 "
                   f"{signature.manifest_sha256[:16]}...) with key_id {signature.key_id}")
        return ExitCode.OK

    run_program(program)


@main.command()
@BUNDLE
@click.option("--trusted-keys", required=True, type=click.Path(exists=True, path_type=Path), envvar=TRUSTED_KEYS_ENV,
              show_envvar=True, help="A file of public keys (ssh-ed25519 lines or PEM) or a folder of *.pub files.")
def verify(bundle, trusted_keys):
    """Check BUNDLE as pyimgano-infer --trusted-keys would: exit 0 naming the key_id, or 3 saying why not."""

    def program() -> ExitCode:
        opened = open_bundle(bundle, trusted_keys=load_trusted_keys(trusted_keys))
        click.echo(f"verified: {bundle} ({opened.manifest.name} version {opened.manifest.version}) is signed "
                   f"by trusted key_id {opened.origin.key_id}")
        return ExitCode.OK

    run_program(program)


if __name__ == "__main__":
    main()
