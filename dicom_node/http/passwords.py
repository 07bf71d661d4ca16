"""Credentials of the node's HTTP server: password hashes (scrypt, standard library) and API tokens.

A password is kept in the configuration only as ``scrypt$N$r$p$SALT$HASH`` (salt and hash in base64);
an API token only as the hex SHA-256 of the token (tokens are random, 32 bytes: a fast hash is enough).
Every comparison is constant-time (``hmac.compare_digest``).

Make them with::

    python -m dicom_node.http.passwords hash-password      # asks for the password twice
    python -m dicom_node.http.passwords new-token          # prints a token and the sha256 to configure
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass

SCHEME = "scrypt"
# scrypt cost: N = 2**14, r = 8, p = 1 (16 MiB, tens of milliseconds per check; OWASP's minimum is 2**13)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAX_N = 2**20  # a configured hash asking for more memory than 1 GiB is refused
SALT_BYTES = 16
HASH_BYTES = 32
TOKEN_BYTES = 32  # 256 random bits per API token
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class BadHash(ValueError):
    """A configured password hash that is not ``scrypt$N$r$p$SALT$HASH``."""


@dataclass(frozen=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise BadHash(
                "a password hash is scrypt$N$r$p$SALT$HASH (python -m dicom_node.http.passwords hash-password)"
            )
        try:
            n, r, p = (int(x) for x in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error) as exc:
            raise BadHash(f"unreadable password hash: {exc}") from exc
        if n < 2 or n > SCRYPT_MAX_N or n & (n - 1) or r < 1 or p < 1 or not salt or not digest:
            raise BadHash("password hash parameters out of range (N a power of two up to 2**20, r and p >= 1)")
        return cls(n, r, p, salt, digest)

    def __str__(self) -> str:
        salt, digest = (base64.b64encode(b).decode() for b in (self.salt, self.digest))
        return f"{SCHEME}${self.n}${self.r}${self.p}${salt}${digest}"

    def derive(self, password: str) -> bytes:
        return _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(self.derive(password), self.digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    maxmem = 2 * 128 * r * (n + p + 2)  # what scrypt needs (128 r N bytes), with headroom
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return str(ScryptHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest))


# checked against unknown user names, so that a wrong name costs as long as a wrong password
DUMMY_HASH = ScryptHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * SALT_BYTES, b"\0" * HASH_BYTES)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicom_node.http.passwords")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash-password", help="print the scrypt hash of a password (read from the terminal or stdin)")
    sub.add_parser("new-token", help="print a new API token and the sha256 to put in [[http.tokens]]")
    args = parser.parse_args(argv)
    if args.command == "new-token":
        token = new_token()
        print(f"token:  {token}\nsha256: {token_sha256(token)}")
        return 0
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
