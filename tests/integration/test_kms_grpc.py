"""KMS v2 and v1beta1 over real gRPC on real unix sockets (path and abstract).

Servers run in-process on short temporary paths (a unix socket path is limited to 107 bytes);
``kinko kms serve`` runs as a real subprocess. Every wait polls with a bounded deadline; no test
asserts on timing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from kinko.crypto.types import DekSourceType, EncryptedObject
from kinko.errors import (
    DecryptionError,
    InvalidArgument,
    KinkoError,
    PluginError,
    UnavailableError,
)
from kinko.gen import kms_v1beta1_pb2 as v1pb
from kinko.gen import kms_v2_pb2 as v2pb
from kinko.kms.client import GrpcKmsV1Api, GrpcKmsV2Api, parse_endpoint
from kinko.kms.envelope import KmsV2Session
from kinko.kms.plugin import ANNOTATION_KEY, LocalKeyPlugin, key_id_for
from kinko.kms.port import EncryptResult, StatusResult
from kinko.kms.server import INTERNAL_DETAILS, KmsV2Server

KEY = bytes(range(32))
SEED = b"s" * 32
ANN = {ANNOTATION_KEY: b"1"}
DEADLINE = 20.0  # Upper bound of every readiness wait; never reached when things work.
MAIN = "from kinko.cli.main import main; main()"


def wait_until(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        threading.Event().wait(0.01)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kk-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def endpoint(sock_dir: Path) -> str:
    return f"unix://{sock_dir}/kms.sock"


@contextlib.contextmanager
def serving(api: object, endpoint: str) -> Iterator[KmsV2Server]:
    server = KmsV2Server(api, endpoint)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop(0)


@pytest.fixture
def plugin_endpoint(endpoint: str) -> Iterator[str]:
    with serving(LocalKeyPlugin(KEY), endpoint):
        yield endpoint


# -- endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("unix:///var/run/kms/plugin.sock", "unix:/var/run/kms/plugin.sock"),
        ("unix:///@kms-provider.sock", "unix-abstract:kms-provider.sock"),
        ("unix:///tmp/a%20b.sock", "unix:/tmp/a b.sock"),
    ],
)
def test_parse_endpoint(endpoint: str, target: str) -> None:
    assert parse_endpoint(endpoint) == target


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("", "can't use empty string"),
        ("tcp://127.0.0.1:80", 'unsupported scheme "tcp" for KMS provider, only unix is supported'),
        ("/var/run/kms.sock", 'unsupported scheme "" for KMS provider'),
        ("unix://", "expected a socket path"),
        ("unix:///@", "expected an abstract socket name"),
    ],
)
def test_parse_endpoint_refuses(endpoint: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_endpoint(endpoint)


# -- the three calls over a real socket ---------------------------------------------------


def test_status_encrypt_decrypt_over_a_path_socket(plugin_endpoint: str) -> None:
    with GrpcKmsV2Api(plugin_endpoint) as api:
        status = api.status()
        assert (status.version, status.healthz, status.key_id) == ("v2", "ok", key_id_for(KEY))
        wrapped = api.encrypt(SEED, uid=str(uuid.uuid4()))
        assert wrapped.key_id == status.key_id
        assert dict(wrapped.annotations) == ANN
        plain = api.decrypt(wrapped.ciphertext, uid="u", key_id=wrapped.key_id, annotations=ANN)
        assert plain == SEED


def test_abstract_socket() -> None:
    endpoint = f"unix:///@kinko-test-{uuid.uuid4().hex}"
    with serving(LocalKeyPlugin(KEY), endpoint), GrpcKmsV2Api(endpoint) as api:
        wrapped = api.encrypt(SEED, uid="u")
        got = api.decrypt(wrapped.ciphertext, uid="u", key_id=wrapped.key_id, annotations=ANN)
        assert got == SEED


def test_session_end_to_end_over_grpc(plugin_endpoint: str) -> None:
    with GrpcKmsV2Api(plugin_endpoint) as writer_api, GrpcKmsV2Api(plugin_endpoint) as reader_api:
        writer = KmsV2Session(writer_api, name="kms")
        state = writer.write_state()
        reader = KmsV2Session(reader_api, name="kms")
        obj = EncryptedObject(
            encrypted_data=b"x",
            key_id=state.key_id,
            encrypted_dek_source=state.encrypted_dek_source,
            annotations=state.annotations,
            dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
        )
        assert reader.dek_source(obj) == state.seed
        assert reader.dek_source(obj) == state.seed
        assert reader.cache_stats().misses == 1


def test_refusals_are_decryption_errors(plugin_endpoint: str) -> None:
    with GrpcKmsV2Api(plugin_endpoint) as api:
        wrapped = api.encrypt(SEED, uid="u")
        tampered = bytearray(wrapped.ciphertext)
        tampered[20] ^= 1
        with pytest.raises(DecryptionError):
            api.decrypt(bytes(tampered), uid="u", key_id=wrapped.key_id, annotations=ANN)
        with pytest.raises(DecryptionError) as info:
            api.decrypt(wrapped.ciphertext, uid="u", key_id="other", annotations=ANN)
        assert info.value.__cause__ is None


# -- request validation by the shell ------------------------------------------------------


def raw_call(endpoint: str, method: str, request: Message) -> grpc.StatusCode:
    """Call ``method`` without kinko's client and return the status code."""
    responses: dict[str, Callable[[bytes], object]] = {
        "Encrypt": v2pb.EncryptResponse.FromString,
        "Decrypt": v2pb.DecryptResponse.FromString,
        "Status": v2pb.StatusResponse.FromString,
    }
    with grpc.insecure_channel(parse_endpoint(endpoint)) as channel:
        rpc: grpc.UnaryUnaryMultiCallable[Message, object] = channel.unary_unary(
            f"/v2.KeyManagementService/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=responses[method],
        )
        try:
            rpc(request, timeout=DEADLINE, wait_for_ready=True)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("Encrypt", v2pb.EncryptRequest(plaintext=SEED, uid="")),
        ("Encrypt", v2pb.EncryptRequest(plaintext=b"", uid="u")),
        ("Decrypt", v2pb.DecryptRequest(ciphertext=b"", uid="u", key_id="k", annotations=ANN)),
        ("Decrypt", v2pb.DecryptRequest(ciphertext=b"c", uid="", key_id="k", annotations=ANN)),
        ("Decrypt", v2pb.DecryptRequest(ciphertext=b"c", uid="u", key_id="", annotations=ANN)),
        ("Decrypt", v2pb.DecryptRequest(ciphertext=b"c", uid="u", key_id="k", annotations=ANN)),
    ],
    ids=[
        "encrypt-empty-uid",
        "encrypt-empty-plaintext",
        "decrypt-empty-ciphertext",
        "decrypt-empty-uid",
        "decrypt-empty-key-id",
        "decrypt-unknown-key-id",
    ],
)
def test_invalid_requests_get_invalid_argument(
    plugin_endpoint: str, method: str, request_: Message
) -> None:
    assert raw_call(plugin_endpoint, method, request_) is grpc.StatusCode.INVALID_ARGUMENT


def test_status_needs_nothing(plugin_endpoint: str) -> None:
    assert raw_call(plugin_endpoint, "Status", v2pb.StatusRequest()) is grpc.StatusCode.OK


# -- failures and garbage -----------------------------------------------------------------


class FakeApi:
    """Answers whatever the test sets; raises what it is told to."""

    def __init__(self) -> None:
        self.plugin = LocalKeyPlugin(KEY)
        self.status_answer: StatusResult | None = None
        self.encrypt_answer: EncryptResult | None = None
        self.error: Exception | None = None
        self.release = threading.Event()
        self.hang = False
        self.entered = threading.Event()

    def _maybe_fail(self) -> None:
        self.entered.set()
        if self.hang:
            self.release.wait(DEADLINE)
        if self.error is not None:
            raise self.error

    def status(self) -> StatusResult:
        self._maybe_fail()
        return self.status_answer or self.plugin.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        self._maybe_fail()
        return self.encrypt_answer or self.plugin.encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        self._maybe_fail()
        return self.plugin.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)


@pytest.fixture
def fake(endpoint: str) -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi()
    try:
        with serving(api, endpoint):
            yield api, endpoint
    finally:
        api.release.set()


def test_client_times_out_against_a_hanging_plugin(fake: tuple[FakeApi, str]) -> None:
    api, endpoint = fake
    api.hang = True
    with GrpcKmsV2Api(endpoint, timeout=0.2) as client:
        with pytest.raises(PluginError, match="DEADLINE_EXCEEDED") as info:
            client.status()
        assert endpoint in str(info.value)
        assert "Status" in str(info.value)
        with pytest.raises(PluginError, match="DEADLINE_EXCEEDED"):
            client.decrypt(b"c" * 60, uid="u", key_id="k", annotations=ANN)
    assert api.entered.is_set()


def test_client_times_out_when_nothing_listens(endpoint: str) -> None:
    with (
        GrpcKmsV2Api(endpoint, timeout=0.2) as client,
        pytest.raises(PluginError, match=r"Status (timed out|is unavailable)"),
    ):
        client.status()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnavailableError("hsm offline"), "UNAVAILABLE"),
        (PluginError("key service down"), "UNAVAILABLE"),
        (KinkoError("odd"), "INTERNAL"),
        (RuntimeError("bug with secret detail"), "INTERNAL"),
    ],
)
def test_server_errors_map_to_grpc_codes(
    fake: tuple[FakeApi, str], error: Exception, code: str
) -> None:
    api, endpoint = fake
    api.error = error
    with GrpcKmsV2Api(endpoint) as client, pytest.raises(PluginError, match=code) as info:
        client.status()
    if code == "INTERNAL":
        assert INTERNAL_DETAILS in str(info.value)
        assert "secret detail" not in str(info.value)


def test_decryption_error_in_the_plugin_reaches_the_client_opaque(
    fake: tuple[FakeApi, str],
) -> None:
    api, endpoint = fake
    api.error = DecryptionError()
    with GrpcKmsV2Api(endpoint) as client, pytest.raises(DecryptionError):
        client.decrypt(b"c", uid="u", key_id="k", annotations=ANN)


@pytest.mark.parametrize(
    ("status", "encrypt"),
    [
        (StatusResult("v2", "ok", ""), None),
        (StatusResult("v2", "ok", "k" * 1025), None),
        (StatusResult("v2", "sick", "k1"), None),
        (StatusResult("v1", "ok", "k1"), None),
        (StatusResult("v2", "ok", "k1"), EncryptResult(b"c", "k2", {})),
        (StatusResult("v2", "ok", "k1"), EncryptResult(b"c" * 1025, "k1", {})),
        (StatusResult("v2", "ok", "k1"), EncryptResult(b"", "k1", {})),
        (StatusResult("v2", "ok", "k1"), EncryptResult(b"c", "k1", {"Foo/bar": b"1"})),
        (StatusResult("v2", "ok", "k1"), EncryptResult(b"c", "k1", {"a.b": b"v" * 33 * 1024})),
    ],
    ids=[
        "empty-key-id",
        "long-key-id",
        "unhealthy",
        "bad-version",
        "encrypt-key-id-differs",
        "oversize-ciphertext",
        "empty-ciphertext",
        "bad-annotation-key",
        "oversize-annotations",
    ],
)
def test_garbage_through_the_grpc_shell_is_a_plugin_error_in_the_session(
    fake: tuple[FakeApi, str], status: StatusResult, encrypt: EncryptResult | None
) -> None:
    api, endpoint = fake
    with GrpcKmsV2Api(endpoint) as client:
        session = KmsV2Session(client, name="kms")
        good = session.write_state()
        api.status_answer = status
        api.encrypt_answer = encrypt
        with pytest.raises(PluginError):
            session.check()
        assert session.write_state() is good


# -- the socket file ----------------------------------------------------------------------


def test_socket_is_0600_even_under_a_permissive_umask(endpoint: str, sock_dir: Path) -> None:
    previous = os.umask(0)
    try:
        with serving(LocalKeyPlugin(KEY), endpoint):
            mode = (sock_dir / "kms.sock").stat().st_mode
    finally:
        os.umask(previous)
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_socket_file_is_removed_on_stop(endpoint: str, sock_dir: Path) -> None:
    with serving(LocalKeyPlugin(KEY), endpoint):
        assert (sock_dir / "kms.sock").exists()
    assert not (sock_dir / "kms.sock").exists()


def make_stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def test_stale_socket_file_is_replaced(endpoint: str, sock_dir: Path) -> None:
    path = sock_dir / "kms.sock"
    previous = os.umask(0o022)
    try:
        make_stale_socket(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    with serving(LocalKeyPlugin(KEY), endpoint), GrpcKmsV2Api(endpoint) as api:
        assert api.status().healthz == "ok"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_non_socket_file_is_never_replaced(endpoint: str, sock_dir: Path) -> None:
    path = sock_dir / "kms.sock"
    path.write_bytes(b"precious")
    with pytest.raises(InvalidArgument, match="not a socket"):
        KmsV2Server(LocalKeyPlugin(KEY), endpoint).start()
    assert path.read_bytes() == b"precious"


def test_a_live_socket_is_never_stolen(endpoint: str, sock_dir: Path) -> None:
    path = sock_dir / "kms.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(UnavailableError, match="another process is listening"):
            KmsV2Server(LocalKeyPlugin(KEY), endpoint).start()
        assert path.exists()
    finally:
        listener.close()


def test_a_missing_directory_is_an_unavailable_error(sock_dir: Path) -> None:
    server = KmsV2Server(LocalKeyPlugin(KEY), f"unix://{sock_dir}/missing/kms.sock")
    with pytest.raises(UnavailableError, match="cannot listen"):
        server.start()


def test_extra_handlers_are_served_beside_the_kms_service(endpoint: str) -> None:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request[::-1]

    extra = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=bytes, response_serializer=bytes
            )
        },
    )
    server = KmsV2Server(LocalKeyPlugin(KEY), endpoint, extra_handlers=[extra])
    server.start()
    try:
        with grpc.insecure_channel(parse_endpoint(endpoint)) as channel:
            method = channel.unary_unary(
                "/test.Echo/Echo", request_serializer=bytes, response_deserializer=bytes
            )
            assert method(b"abc", timeout=DEADLINE, wait_for_ready=True) == b"cba"
        with GrpcKmsV2Api(endpoint) as api:
            wrapped = api.encrypt(SEED, uid="u")
            assert (
                api.decrypt(
                    wrapped.ciphertext,
                    uid="u",
                    key_id=wrapped.key_id,
                    annotations=wrapped.annotations,
                )
                == SEED
            )
    finally:
        server.stop(0)


def test_start_twice_is_refused(plugin_endpoint: str) -> None:
    # A second server object on a live path: refused, the first keeps serving.
    with pytest.raises(UnavailableError):
        KmsV2Server(LocalKeyPlugin(KEY), plugin_endpoint).start()
    with GrpcKmsV2Api(plugin_endpoint) as api:
        assert api.status().healthz == "ok"


# -- KMS v1 (v1beta1) ---------------------------------------------------------------------


class V1Mock:
    """Upstream's v1beta1 base64 mock: the "encrypted DEK" is the base64 text of the DEK."""

    def __init__(self, version: str = "v1beta1") -> None:
        self.version = version
        self.version_calls = 0
        self.request_versions: list[str] = []

    def version_rpc(
        self, request: v1pb.VersionRequest, context: grpc.ServicerContext
    ) -> v1pb.VersionResponse:
        self.version_calls += 1
        self.request_versions.append(request.version)
        return v1pb.VersionResponse(
            version=self.version, runtime_name="mock", runtime_version="0.0.1"
        )

    def decrypt_rpc(
        self, request: v1pb.DecryptRequest, context: grpc.ServicerContext
    ) -> v1pb.DecryptResponse:
        self.request_versions.append(request.version)
        try:
            plain = base64.b64decode(request.cipher, validate=True)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not base64")
        return v1pb.DecryptResponse(plain=plain)


@contextlib.contextmanager
def v1_serving(mock: V1Mock, endpoint: str) -> Iterator[None]:
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "v1beta1.KeyManagementService",
                {
                    "Version": grpc.unary_unary_rpc_method_handler(
                        mock.version_rpc,
                        request_deserializer=v1pb.VersionRequest.FromString,
                        response_serializer=v1pb.VersionResponse.SerializeToString,
                    ),
                    "Decrypt": grpc.unary_unary_rpc_method_handler(
                        mock.decrypt_rpc,
                        request_deserializer=v1pb.DecryptRequest.FromString,
                        response_serializer=v1pb.DecryptResponse.SerializeToString,
                    ),
                },
            )
        ]
    )
    server.add_insecure_port(parse_endpoint(endpoint))
    server.start()
    try:
        yield
    finally:
        server.stop(0).wait()


def test_v1_decrypt_calls_version_once(endpoint: str) -> None:
    mock = V1Mock()
    dek = bytes(range(32))
    with v1_serving(mock, endpoint), GrpcKmsV1Api(endpoint) as api:
        assert api.decrypt(base64.b64encode(dek)) == dek
        assert api.decrypt(base64.b64encode(b"other")) == b"other"
    assert mock.version_calls == 1
    assert mock.request_versions == ["v1beta1"] * 3


def test_v1_wrong_version_is_a_plugin_error(endpoint: str) -> None:
    mock = V1Mock(version="v2")
    with v1_serving(mock, endpoint), GrpcKmsV1Api(endpoint) as api:
        with pytest.raises(PluginError, match="expected KMS API version v1beta1"):
            api.decrypt(base64.b64encode(b"x"))
        with pytest.raises(PluginError):
            api.decrypt(base64.b64encode(b"x"))
    assert mock.version_calls == 2


def test_v1_refusal_is_a_decryption_error(endpoint: str) -> None:
    with (
        v1_serving(V1Mock(), endpoint),
        GrpcKmsV1Api(endpoint) as api,
        pytest.raises(DecryptionError),
    ):
        api.decrypt(b"%%% not base64 %%%")


def test_v1_unavailable_is_a_plugin_error(endpoint: str) -> None:
    with GrpcKmsV1Api(endpoint, timeout=0.2) as api, pytest.raises(PluginError, match="Version"):
        api.decrypt(b"x")


# -- kinko kms serve / status as real processes -------------------------------------------


def kinko(*args: str) -> list[str]:
    return [sys.executable, "-c", MAIN, *args]


def test_kinko_kms_serve_and_status_as_processes(sock_dir: Path) -> None:
    endpoint = f"unix://{sock_dir}/kms.sock"
    key_file = sock_dir / "kek"
    proc = subprocess.Popen(
        kinko("kms", "serve", "--socket", endpoint, "--key-file", str(key_file), "--create-key"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or (sock_dir / "kms.sock").exists(),
            "the plugin socket",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert stat.S_IMODE((sock_dir / "kms.sock").stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        status = subprocess.run(
            kinko("kms", "status", "--socket", endpoint, "--timeout", "10s"),
            capture_output=True,
            text=True,
            timeout=DEADLINE * 2,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        answer = json.loads(status.stdout)
        with GrpcKmsV2Api(endpoint) as api:
            wrapped = api.encrypt(SEED, uid="u")
            got = api.decrypt(wrapped.ciphertext, uid="u", key_id=wrapped.key_id, annotations=ANN)
        assert got == SEED
        assert answer == {"version": "v2", "healthz": "ok", "key_id": wrapped.key_id}

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"listening on {endpoint} with key_id {answer['key_id']}" in out
    assert not (sock_dir / "kms.sock").exists()


def test_kinko_kms_status_without_a_plugin_exits_10(sock_dir: Path) -> None:
    result = subprocess.run(
        kinko("kms", "status", "--socket", f"unix://{sock_dir}/none.sock", "--timeout", "200ms"),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert result.returncode == 10
    assert result.stderr.startswith("error: KMS plugin at unix://")


def test_kinko_kms_serve_refuses_a_readable_key_file(sock_dir: Path) -> None:
    key_file = sock_dir / "kek"
    key_file.write_bytes(base64.b64encode(KEY))
    key_file.chmod(0o644)
    result = subprocess.run(
        kinko(
            "kms", "serve", "--socket", f"unix://{sock_dir}/kms.sock", "--key-file", str(key_file)
        ),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert result.returncode == 4
    assert "mode 0644" in result.stderr
    assert not (sock_dir / "kms.sock").exists()
