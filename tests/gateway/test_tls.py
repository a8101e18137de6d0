"""TLS from PEM files, and reloading the certificate without dropping connections.

The gateway serves `wss://` with a self-signed certificate made here; clients trust exactly the certificates
a test gives them, so a handshake proves which certificate the gateway presented. The certificate is then
replaced on disk and reloaded, in-process with `reload_tls()` and in a `python -m icgw` process with SIGHUP:
the open connection keeps working and new connections get the new certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from icgw.config import GatewayConfig, SocketAddress
from icgw.gateway.app import GatewayRuntime
from icgw.replica import Replica, ReplicaConfig
from icgw.wsclient import IcWebSocketClient, WsClientError

from ..e2e.processes import free_port, gateway, wait_for

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class SelfSigned:
    """A self-signed certificate for 127.0.0.1 and localhost, with its key, in PEM."""

    name: str
    certificate_pem: bytes
    key_pem: bytes

    @classmethod
    def make(cls, name: str) -> SelfSigned:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            name,
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    def trusted_by(self) -> ssl.SSLContext:
        """A client context that trusts this certificate only (hostname checked: 127.0.0.1)."""
        return ssl.create_default_context(cadata=self.certificate_pem.decode())


@dataclass(frozen=True)
class PemFiles:
    certificate: Path
    key: Path

    def write(self, certificate_pem: bytes, key_pem: bytes) -> None:
        self.certificate.write_bytes(certificate_pem)
        self.key.write_bytes(key_pem)
        self.key.chmod(0o600)

    def install(self, pair: SelfSigned) -> None:
        self.write(pair.certificate_pem, pair.key_pem)


@pytest.fixture
def pem_files(tmp_path: Path) -> PemFiles:
    return PemFiles(tmp_path / "cert.pem", tmp_path / "key.pem")


def presented_name(client: IcWebSocketClient) -> str:
    """The common name of the certificate the gateway presented on this client's connection."""
    ssl_object = client.transport.underlying_transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    name = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(name[0].value)


async def open_client(
    url: str, canister: bytes | str, ic_url: str, trust: ssl.SSLContext
) -> IcWebSocketClient:
    client = await IcWebSocketClient.connect(url, canister, ic_url=ic_url, ssl_context=trust)
    await asyncio.wait_for(client.open(), 10)
    ping = await asyncio.wait_for(client.receive(), 10)
    assert ping.app_message is not None
    assert ping.app_message["text"] == "ping"
    return client


async def round_trip(client: IcWebSocketClient, text: str) -> None:
    await client.send_app_message(text)
    reply = await asyncio.wait_for(client.receive(), 10)
    assert reply.app_message is not None
    assert reply.app_message["text"] == f"{text} ping"


async def refused(url: str, canister: bytes | str, ic_url: str, trust: ssl.SSLContext) -> WsClientError:
    with pytest.raises(WsClientError) as failed:
        await IcWebSocketClient.connect(url, canister, ic_url=ic_url, ssl_context=trust)
    assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError), failed.value
    return failed.value


@dataclass
class InProcess:
    replica: Replica
    gateway: GatewayRuntime

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.gateway.port}"

    async def open_client(self, trust: ssl.SSLContext) -> IcWebSocketClient:
        return await open_client(self.url, self.replica.canister_ids[0], self.replica.url, trust)


@pytest.fixture
async def in_process(tmp_path: Path, pem_files: PemFiles) -> AsyncIterator[InProcess]:
    first = SelfSigned.make("first")
    pem_files.install(first)
    replica = Replica(ReplicaConfig(port=0))
    await replica.start()
    runtime = GatewayRuntime(
        GatewayConfig(
            gateway_address=SocketAddress("127.0.0.1", 0),
            ic_network_url=replica.url,
            polling_interval_ms=10,
            prometheus_endpoint=None,
            data_dir=tmp_path,
            tls_certificate_pem_path=pem_files.certificate,
            tls_certificate_key_pem_path=pem_files.key,
        )
    )
    try:
        await runtime.start()
        yield InProcess(replica, runtime)
    finally:
        await runtime.stop()
        await replica.stop()


async def test_wss_open_and_reload_keeps_the_open_connection(
    in_process: InProcess, pem_files: PemFiles
) -> None:
    first = SelfSigned("first", pem_files.certificate.read_bytes(), pem_files.key.read_bytes())
    second = SelfSigned.make("second")
    both = ssl.create_default_context(cadata=(first.certificate_pem + second.certificate_pem).decode())

    old = await in_process.open_client(first.trusted_by())
    assert presented_name(old) == "first"
    await round_trip(old, "before the reload")

    pem_files.install(second)
    in_process.gateway.reload_tls()

    await round_trip(old, "after the reload")  # the open connection never noticed
    new = await in_process.open_client(both)
    assert presented_name(new) == "second"
    await round_trip(new, "on the new certificate")
    await refused(
        in_process.url, in_process.replica.canister_ids[0], in_process.replica.url, first.trusted_by()
    )
    await round_trip(old, "still here")
    await asyncio.gather(old.close(), new.close())


async def test_a_reload_of_files_that_do_not_match_keeps_the_old_certificate(
    in_process: InProcess, pem_files: PemFiles
) -> None:
    """A SIGHUP that comes while the files are half rewritten (the new certificate, the old key) must not
    leave the gateway presenting a certificate it has no key for: every new handshake would fail."""
    first = SelfSigned("first", pem_files.certificate.read_bytes(), pem_files.key.read_bytes())
    second = SelfSigned.make("second")
    both = ssl.create_default_context(cadata=(first.certificate_pem + second.certificate_pem).decode())

    pem_files.write(second.certificate_pem, first.key_pem)
    in_process.gateway.reload_tls()
    client = await in_process.open_client(both)
    assert presented_name(client) == "first"

    pem_files.write(b"-----BEGIN CERTIFICATE-----\ntruncated", first.key_pem)
    in_process.gateway.reload_tls()
    other = await in_process.open_client(both)
    assert presented_name(other) == "first"

    pem_files.install(second)  # the rewrite completes; the next reload takes it
    in_process.gateway.reload_tls()
    latest = await in_process.open_client(both)
    assert presented_name(latest) == "second"
    await asyncio.gather(client.close(), other.close(), latest.close())


async def test_sighup_reloads_the_certificate_of_a_gateway_process(
    tmp_path: Path, pem_files: PemFiles
) -> None:
    """`python -m icgw` with its embedded replica, TLS on, and a real SIGHUP."""
    first, second = SelfSigned.make("first"), SelfSigned.make("second")
    pem_files.install(first)
    ic_url = f"http://127.0.0.1:{free_port()}"
    manager = gateway(
        ic_url,
        tmp_path,
        "--embedded-replica",
        "--polling-interval",
        "10",
        "--tls-certificate-pem-path",
        str(pem_files.certificate),
        "--tls-certificate-key-pem-path",
        str(pem_files.key),
    )
    process = await asyncio.to_thread(manager.__enter__)
    try:
        canister = next(
            match.group(1)
            for line in process.output
            if (match := re.search(r"embedded IC replica at \S+ with canisters (\S+)", line))
        )
        url = f"wss://127.0.0.1:{process.port}"
        old = await open_client(url, canister, ic_url, first.trusted_by())
        assert presented_name(old) == "first"

        pem_files.install(second)
        process.process.send_signal(signal.SIGHUP)
        await asyncio.to_thread(
            wait_for, lambda: any("TLS certificate reloaded" in line for line in process.output)
        )

        await round_trip(old, "after SIGHUP")
        new = await open_client(url, canister, ic_url, second.trusted_by())
        assert presented_name(new) == "second"
        await round_trip(new, "hello")
        await refused(url, canister, ic_url, first.trusted_by())
        await asyncio.gather(old.close(), new.close())
        assert process.process.poll() is None  # SIGHUP did not stop it
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)
