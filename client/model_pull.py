"""``semiofed site pull``: fetch a model from the registry, verify it, then install it.

Verification fails closed, in this order: the manifest must carry a signature; the
signature must verify against the coordinator public key the site pinned (``--coordinator-key``);
the signed manifest must name the requested version; a version the registry marks retired is
refused, and its retirement must verify against the same key (else the registry's claim is
reported as unverified); the downloaded weights must have the signed size and SHA-256. Only
then is the version installed, atomically::

    STATE/models/<version>/model.safetensors, manifest.json, manifest.sig, model_card.json
                           calibration.json (when the card has a ``calibration`` section)
    STATE/models/current -> <version>

A version published with the consortium's DP calibration (the card's ``calibration`` and
``anomaly`` sections, signed with the weights) installs it as the folder's
``calibration.json``, so ``site analyze --model STATE/models/current`` uses the federated
temperature, thresholds and anomaly model (the aberrant flag) without any local fit.

Without ``--version`` the newest active version is pulled, and a version older than the
installed one (a rollback) is refused. The registry is reached over HTTPS, its certificate
verified against ``--ca`` (``semiofed.shared.registry_http``); the token goes in the
``Authorization`` header only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiofed.privacy.keys import (
    SignatureError,
    canonical_json,
    fingerprint,
    load_public_key,
    sha256_file,
    verify,
)
from semiofed.shared.atomic import atomic_write_bytes, atomic_write_json
from semiofed.shared.errors import SemioFedError
from semiofed.shared.manifest import (
    CARD_FILE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    VERSION_RE,
    Manifest,
    ManifestError,
    validate_manifest,
)
from semiofed.shared.model_folder import CONFIG_FILE, WEIGHTS_FILE
from semiofed.shared.registry_http import CA_HELP, registry_client
from semiofed.shared.retirement import retirement_problem

from . import site_audit

TOKEN_ENV = "SEMIOFED_REGISTRY_TOKEN"
CURRENT = "current"


class VerificationError(SignatureError):
    """A downloaded model failed verification; nothing was installed."""


class RetiredVersion(SemioFedError):
    """The coordinator retired the version (its signed retirement verified); not installed."""


@dataclass(frozen=True)
class InstalledModel:
    version: str
    path: Path
    weights_sha256: str
    card: dict[str, Any]
    already_installed: bool


def models_dir(state: str | Path) -> Path:
    return Path(state) / "models"


def current_model(state: str | Path) -> Path | None:
    """The folder of the installed current model, or ``None`` if none is installed."""
    link = models_dir(state) / CURRENT
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def _json(response: Any, what: str) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        raise SemioFedError(f"registry refused {what}: HTTP {response.status_code}: {detail}")
    try:
        return response.json()
    except ValueError:
        raise SemioFedError(f"registry sent invalid JSON for {what}") from None


def _check_manifest(manifest: Any, version: str) -> Manifest:
    """The signed manifest, parsed by the registry's schema, after checking it names ``version``."""
    try:
        parsed = validate_manifest(manifest)
    except ManifestError as exc:
        raise VerificationError(f"{version}: {exc}; refusing to install it") from None
    if parsed.version != version:
        raise VerificationError(
            f"{version}: the signed manifest is for version {parsed.version!r}; refusing it"
        )
    return parsed


def _refuse_retired(pinned: Any, retirement: Any, version: str, sequence: int, sha: str) -> None:
    """Raise: :class:`RetiredVersion` for a retirement signed by the pinned key for exactly
    this version, :class:`VerificationError` for any other retirement the registry sends."""
    statement = retirement.get("statement") if isinstance(retirement, dict) else None
    signature = retirement.get("signature") if isinstance(retirement, dict) else None
    try:
        verify(pinned, canonical_json(statement), signature if isinstance(signature, str) else "")
        problem = retirement_problem(statement, version, sequence, sha)
    except SignatureError as exc:
        problem = str(exc)
    if problem:
        raise VerificationError(
            f"{version}: the registry marks it retired, but its retirement is not the pinned "
            f"coordinator's ({problem}); refusing to install it"
        )
    assert isinstance(statement, dict)
    raise RetiredVersion(
        f"{version}: retired by the coordinator at {statement['retired_at']} (signed retirement "
        f"verified): {statement['reason'] or 'no reason given'}; refusing to install it"
    )


def _download(client: Any, version: str, dest: Path, size: int, headers: dict[str, str]) -> str:
    digest, received = hashlib.sha256(), 0
    with client.stream("GET", f"/api/v1/models/{version}/weights", headers=headers) as response:
        if response.status_code >= 400:
            response.read()
            _json(response, f"the weights of {version}")
        with open(dest, "wb") as fh:
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > size:
                    raise VerificationError(
                        f"{version}: weights larger than the signed size ({size} bytes)"
                    )
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _installed_sequence(state: Path) -> int:
    current = current_model(state)
    if current is None:
        return 0
    try:
        return int(json.loads((current / MANIFEST_FILE).read_text())["sequence"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _set_current(models: Path, version: str) -> None:
    tmp = models / f".{CURRENT}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(version, tmp)
    os.replace(tmp, models / CURRENT)


def pull(
    client: Any,
    token: str,
    coordinator_key: str | Path,
    state: str | Path,
    version: str | None = None,
) -> InstalledModel:
    """Download, verify and install a version through ``client`` (an ``httpx.Client`` on the
    registry). Every model received is recorded in the site's audit trail with the outcome of
    its verification (``model_received``), refused ones included."""
    try:
        model = _pull_verified(client, token, coordinator_key, state, version)
    except VerificationError as exc:
        site_audit.record(
            Path(state),
            "model_received",
            {"version": version, "signature_ok": False, "installed": False, "error": str(exc)},
        )
        raise
    site_audit.record(
        Path(state),
        "model_received",
        {
            "version": model.version,
            "signature_ok": True,
            "installed": True,
            "weights_sha256": model.weights_sha256,
        },
    )
    return model


def _pull_verified(
    client: Any,
    token: str,
    coordinator_key: str | Path,
    state: str | Path,
    version: str | None,
) -> InstalledModel:
    pinned = load_public_key(coordinator_key)
    headers = {"Authorization": f"Bearer {token}"}
    named = version is not None
    if version is None:
        listing = _json(
            client.get("/api/v1/models", params={"status": "active"}, headers=headers),
            "the version list",
        )
        versions = [v for v in listing.get("versions", []) if v.get("status") == "active"]
        if not versions:
            raise SemioFedError("the registry has no active model version to pull")
        version = str(max(versions, key=lambda v: v["sequence"])["version"])
    if not VERSION_RE.match(version):
        raise SemioFedError(f"invalid version name {version!r}")

    signed = _json(
        client.get(f"/api/v1/models/{version}/manifest", headers=headers),
        f"the manifest of {version}",
    )
    manifest = signed.get("manifest") if isinstance(signed, dict) else None
    signature = signed.get("signature") if isinstance(signed, dict) else None
    if not isinstance(signature, str) or not signature.strip():
        raise VerificationError(f"{version}: the model is not signed; refusing to install it")
    try:
        verify(pinned, canonical_json(manifest), signature)
    except SignatureError as exc:
        raise VerificationError(
            f"{version}: {exc} (pinned coordinator key {fingerprint(pinned)[:16]}…); refusing to install it"
        ) from None
    parsed = _check_manifest(manifest, version)
    sha, size, sequence = parsed.weights.sha256, parsed.weights.size, parsed.sequence
    if signed.get("retirement") is not None:
        _refuse_retired(pinned, signed["retirement"], version, sequence, sha)

    state = Path(state)
    models = models_dir(state)
    models.mkdir(parents=True, exist_ok=True)
    if not named and sequence < _installed_sequence(state):
        raise SemioFedError(
            f"{version} (sequence {sequence}) is older than the installed model; refusing a rollback "
            "(pass --version to install an older version on purpose)"
        )
    final = models / version
    if (
        final.is_dir()
        and (final / WEIGHTS_FILE).is_file()
        and sha256_file(final / WEIGHTS_FILE) == sha
    ):
        _set_current(models, version)
        return InstalledModel(version, final, sha, manifest["card"], already_installed=True)

    incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{version}.", dir=models))
    try:
        got = _download(client, version, incoming / WEIGHTS_FILE, size, headers)
        if got != sha:
            raise VerificationError(
                f"{version}: downloaded weights have SHA-256 {got}, the signed manifest says {sha}; "
                "refusing to install them"
            )
        atomic_write_json(incoming / MANIFEST_FILE, manifest)
        atomic_write_bytes(incoming / SIGNATURE_FILE, signature.encode() + b"\n")
        atomic_write_json(incoming / CARD_FILE, manifest["card"])
        architecture = manifest["card"].get("model", {}).get("architecture")
        if isinstance(architecture, dict):  # signed with the card: `site analyze --model` reads it
            atomic_write_json(incoming / CONFIG_FILE, architecture)
        if parsed.card.calibration is not None:  # signed with the card too
            from semiofed.client.analysis.pipeline import CALIBRATION_FILE

            published_calibration(parsed, version).save(incoming / CALIBRATION_FILE)
        if final.exists():  # a stale or damaged earlier copy: replaced by the verified one
            shutil.rmtree(final)
        os.rename(incoming, final)
    finally:
        if incoming.exists():
            shutil.rmtree(incoming)
    _set_current(models, version)
    return InstalledModel(version, final, sha, manifest["card"], already_installed=False)


def published_calibration(manifest: Manifest, version: str) -> Any:
    """The version's signed calibration as a ``calibration.json``
    (:class:`~semiofed.client.analysis.pipeline.SiteCalibration`): the aberrant flag is the
    published anomaly model when the card has one."""
    from semiofed.client.analysis.pipeline import SiteCalibration
    from semiofed.shared.analysis.openset import OpenSetScorer
    from semiofed.shared.labels import CLASSES

    c, a = manifest.card.calibration, manifest.card.anomaly
    assert c is not None
    return SiteCalibration(
        temperature=c.temperature,
        coverage=c.coverage,
        conformal_threshold=c.conformal_threshold,
        source=f"published with {version}: federated (DP)"
        + ("; aberrant flag: the published federated DP anomaly model" if a else ""),
        openset=None if a is None else OpenSetScorer.from_dict(a.scorer),
        class_thresholds=None
        if c.class_thresholds is None
        else [c.class_thresholds[name] for name in CLASSES],
    )


def cmd_pull(args: argparse.Namespace) -> int:
    import httpx

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise SemioFedError(f"a site token is required: --token TOKEN or ${TOKEN_ENV}")
    try:
        with registry_client(args.url, args.ca, args.timeout) as client:
            model = pull(client, token, args.coordinator_key, args.state, args.version)
    except httpx.HTTPError as exc:
        raise SemioFedError(f"{args.url}: registry unreachable ({exc})") from None
    card = model.card
    print(
        f"{'already installed' if model.already_installed else 'installed'} {model.version} → {model.path}"
    )
    print(f"  signature verified; weights SHA-256 {model.weights_sha256}")
    print(f"  architecture hash {card.get('model', {}).get('architecture_hash')}")
    privacy = card.get("privacy", {})
    for site, rec in privacy.get("per_site", {}).items():
        eps = rec.get("epsilon_final")
        print(
            f"  {site}: ε={eps if eps is not None else 'not reported'} δ={rec.get('delta')} "
            f"({rec.get('privacy_unit') or 'unit not reported'}, {rec.get('accountant') or 'accountant not reported'})"
        )
    return 0


def register(cmds: argparse._SubParsersAction) -> None:
    """Add ``site pull``."""
    p = cmds.add_parser(
        "pull",
        help="download a model from the registry, verify its signature and hash, install it",
        description="Download the newest active (or --version) model from the registry, verify it against "
        "the pinned coordinator public key and the signed weights hash, and only then install it "
        "under STATE/models/ (STATE/models/current points to it). A tampered, unsigned or wrongly "
        "signed model is refused and nothing is installed.",
    )
    p.add_argument(
        "--url",
        required=True,
        help="registry address, e.g. https://registry.example.org:8700 (http:// only to a "
        "loopback host)",
    )
    p.add_argument("--token", help=f"site token from the coordinator (default: ${TOKEN_ENV})")
    p.add_argument("--ca", metavar="CA.crt", help=CA_HELP)
    p.add_argument(
        "--coordinator-key",
        required=True,
        metavar="PUB.pem",
        help="the coordinator's public key, obtained out of band and pinned",
    )
    p.add_argument("--version", help="install this version (default: the newest active one)")
    p.add_argument("--state", required=True, metavar="DIR", help="the site's state folder")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="HTTP timeout in seconds (default: 120)"
    )
    p.set_defaults(func=cmd_pull)
