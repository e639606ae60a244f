"""`kinko demo` end to end: a real plugin on a real unix socket, one Secret sealed and opened."""

from __future__ import annotations

from click.testing import CliRunner

from kinko.cli.main import cli


def test_demo_seals_inspects_opens_and_refuses_tampering() -> None:
    result = CliRunner().invoke(cli, ["demo"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "k8s:enc:kms:v2:kinko-demo:" in out
    assert '"dek_source_type": "HKDF_SHA256_XNONCE_AES_GCM_SEED"' in out
    assert "stale=False" in out
    assert '"password": "Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ=="' in out
    assert out.count("refused: DecryptionError") == 2
