"""TLS for `tandem serve`: the certificate and key files, checked before the server starts.

uvicorn loads them itself, but only on the event loop's thread once start-up is under way,
where a mistake ends in a traceback. Checked here first, each one is a single line that names
the setting and the file.
"""

from __future__ import annotations

import ssl

_CERT = "--ssl-certfile (TANDEM_SSL_CERTFILE)"
_KEY = "--ssl-keyfile (TANDEM_SSL_KEYFILE)"


class TLSConfigError(ValueError):
    """The TLS settings cannot work; the message says which one and why."""


def check_tls_files(certfile: str | None, keyfile: str | None) -> bool:
    """Whether TLS is on: both files given, readable, and a certificate chain with its key.

    Neither given: False (plain http and ws). Anything else raises `TLSConfigError`.
    """
    if not certfile and not keyfile:
        return False
    if not certfile or not keyfile:
        given, missing = (_CERT, _KEY) if certfile else (_KEY, _CERT)
        raise TLSConfigError(f"{given} is set but {missing} is not: TLS needs both")
    for what, path in ((_CERT, certfile), (_KEY, keyfile)):
        try:
            with open(path, "rb") as file:
                file.read(1)
        except OSError as exc:
            raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password: an encrypted key fails here instead of prompting on the terminal
        # (the server takes no key password).
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(
            f"{_CERT} {certfile} and {_KEY} {keyfile} are not a PEM certificate chain and its "
            f"unencrypted private key: {exc}"
        ) from None
    return True
