"""Shared fixtures for the cserver tests.

pytest runs with ``--import-mode=importlib``: test modules cannot import each
other, so everything shared lives here, as fixtures.

* ``ss``: parametrizes a test over the stdlib ``socketserver`` (the oracle of
  the behaviour) and ``cserver``; the test id says which one failed.
* ``stdlib_ss``: the interpreter's own ``socketserver`` module.
* ``serve``: starts ``serve_forever()`` on a thread; teardown shuts the
  server down, closes it and joins the thread, whatever the test did.
* ``short_tmpdir``: a short directory under /tmp for Unix socket paths.
* ``net``: small blocking client helpers (connect, send and read to EOF,
  UDP and Unix datagram exchanges), every socket with a timeout.
* ``fd_count``, ``wait_until``: leak checks and bounded polling.
* ``tls``: certificates made for the session with ``cryptography`` (a CA, a
  server certificate for 127.0.0.1/localhost, an expired one, one from an
  unknown CA, one for another name, a client certificate and one from the
  unknown CA) in a temporary directory, and ``ssl.SSLContext`` makers for
  both sides.
* ``tls_engine``: parametrizes a test over the multiplexing loop's two TLS
  engines ("openssl": libssl from C, the default; "python": ssl.SSLObject,
  forced by ``CSERVER_TLS_ENGINE=python``), setting the variable for the
  test's duration (build the server inside the test).
"""
import importlib
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import threading
import types

import pytest

import cserver
from support import TIMEOUT
from support import fd_count as _fd_count
from support import wait_for as _wait_until


def _load_stdlib_socketserver():
    module = sys.modules.get("socketserver")
    if module is None or module is cserver:
        # Nothing in this process may have installed cserver, but be safe:
        # load the stdlib file itself under its own name.
        saved = sys.modules.pop("socketserver", None)
        try:
            module = importlib.import_module("socketserver")
        finally:
            if saved is not None:
                sys.modules["socketserver"] = saved
    stdlib_dir = os.path.realpath(sysconfig.get_paths()["stdlib"])
    assert os.path.realpath(module.__file__).startswith(stdlib_dir), module.__file__
    return module


@pytest.fixture(scope="session")
def stdlib_ss():
    return _load_stdlib_socketserver()


@pytest.fixture(params=["stdlib", "cserver"])
def ss(request):
    """The module under test: the stdlib socketserver, then cserver."""
    if request.param == "stdlib":
        return _load_stdlib_socketserver()
    return cserver


@pytest.fixture
def serve():
    """serve(server, poll_interval=0.05) -> thread running serve_forever().

    At teardown every started server is shut down, closed and its thread
    joined (a test may have done some of that already).
    """
    started = []

    def start(server, poll_interval=0.05):
        errors = []

        def run():
            try:
                server.serve_forever(poll_interval)
            except BaseException as exc:  # reported at teardown
                errors.append(exc)

        thread = threading.Thread(target=run, name="serve_forever", daemon=True)
        started.append((server, thread, errors))
        thread.start()
        return thread

    yield start
    problems = []
    for server, thread, errors in started:
        if thread.is_alive():
            server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        if thread.is_alive():
            problems.append("serve_forever thread did not stop")
        problems.extend(repr(e) for e in errors)
    assert not problems, problems


@pytest.fixture
def short_tmpdir():
    path = tempfile.mkdtemp(prefix="cs", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fd_count():
    return _fd_count


@pytest.fixture
def wait_until():
    return _wait_until


def _connect(address, family=None):
    if family is None:
        family = socket.AF_UNIX if isinstance(address, (str, bytes)) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_all(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _stream_exchange(address, payload):
    """Connect, send payload, half-close, read the reply to EOF."""
    with _connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return _recv_all(sock)


def _dgram_exchange(address, payload, family=socket.AF_INET, bind=None):
    """Send one datagram and return the first reply."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if bind is not None:
            sock.bind(bind)
        sock.sendto(payload, address)
        data, _ = sock.recvfrom(65536)
        return data


@pytest.fixture
def net():
    return types.SimpleNamespace(
        connect=_connect, recv_all=_recv_all, stream_exchange=_stream_exchange,
        dgram_exchange=_dgram_exchange, TIMEOUT=TIMEOUT)


@pytest.fixture
def thread_names():
    """thread_names() -> sorted names of the live threads."""
    return lambda: sorted(t.name for t in threading.enumerate())


class _TLSFiles:
    """Certificates and keys (PEM files in ``directory``) for the TLS tests;
    nothing here is ever committed."""

    def __init__(self, directory):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        import ipaddress

        now = datetime.datetime.now(datetime.timezone.utc)
        day = datetime.timedelta(days=1)
        self.directory = str(directory)

        def name(common):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

        def write(stem, cert, key):
            cert_path = os.path.join(self.directory, stem + ".pem")
            key_path = os.path.join(self.directory, stem + ".key")
            with open(cert_path, "wb") as f:
                f.write(cert.public_bytes(serialization.Encoding.PEM))
            if key is not None:
                with open(key_path, "wb") as f:
                    f.write(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
            return cert_path, key_path

        def ca(common):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(name(common))
                    .issuer_name(name(common)).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - day).not_valid_after(now + 30 * day)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                   critical=True)
                    .add_extension(x509.KeyUsage(
                        digital_signature=True, content_commitment=False,
                        key_encipherment=False, data_encipherment=False,
                        key_agreement=False, key_cert_sign=True, crl_sign=True,
                        encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                        key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            return cert, key

        def leaf(common, issuer_cert, issuer_key, sans, usage, before, after):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder().subject_name(name(common))
                       .issuer_name(issuer_cert.subject).public_key(key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(before).not_valid_after(after)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                      critical=True)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                           issuer_key.public_key()), critical=False))
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans),
                                                critical=False)
            return builder.sign(issuer_key, hashes.SHA256()), key

        server_names = [x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ca_cert, ca_key = ca("cserver test CA")
        self.ca, _ = write("ca", ca_cert, None)
        other_cert, other_key = ca("unknown CA")
        self.other_ca, _ = write("other-ca", other_cert, None)
        server = ExtendedKeyUsageOID.SERVER_AUTH
        client = ExtendedKeyUsageOID.CLIENT_AUTH
        self.server = write("server", *leaf("localhost", ca_cert, ca_key, server_names,
                                            server, now - day, now + 30 * day))
        self.expired = write("expired", *leaf("localhost", ca_cert, ca_key, server_names,
                                              server, now - 30 * day, now - day))
        self.unknown = write("unknown", *leaf("localhost", other_cert, other_key,
                                              server_names, server, now - day,
                                              now + 30 * day))
        self.wrong_name = write("wrong-name", *leaf(
            "elsewhere.example", ca_cert, ca_key, [x509.DNSName("elsewhere.example")],
            server, now - day, now + 30 * day))
        self.client = write("client", *leaf("a client", ca_cert, ca_key, None, client,
                                            now - day, now + 30 * day))
        self.client_unknown = write("client-unknown", *leaf(
            "a stranger", other_cert, other_key, None, client, now - day, now + 30 * day))

    def server_context(self, chain=None, require_client_cert=False, version=None):
        """A server-side context with ``chain`` (``self.server`` unless
        given); client certificates required (signed by the CA) if asked;
        pinned to ``version`` (an ``ssl.TLSVersion``) if given."""
        import ssl
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*(chain or self.server))
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def client_context(self, ca=None, chain=None, version=None):
        """A verifying client context trusting ``ca`` (the test CA unless
        given), with a client certificate ``chain`` if given, pinned to
        ``version`` (an ``ssl.TLSVersion``) if given."""
        import ssl
        ctx = ssl.create_default_context(cafile=ca or self.ca)
        if chain:
            ctx.load_cert_chain(*chain)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx


    def lax_client_context(self):
        """A client context that verifies nothing (to reach a server whose
        certificate a verifying client refuses)."""
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """Certificates for the TLS tests (see _TLSFiles), made once a session."""
    return _TLSFiles(tmp_path_factory.mktemp("tls"))


#: the multiplexing loop's TLS engines (what ``stats()["tls_engine"]`` says)
TLS_ENGINES = ("openssl", "python")


@pytest.fixture(params=TLS_ENGINES)
def tls_engine(request, monkeypatch):
    """The TLS engine the servers built in this test use: the default
    ("openssl") with ``CSERVER_TLS_ENGINE`` unset, "python" with it set."""
    if request.param == "python":
        monkeypatch.setenv("CSERVER_TLS_ENGINE", "python")
    else:
        monkeypatch.delenv("CSERVER_TLS_ENGINE", raising=False)
    return request.param
