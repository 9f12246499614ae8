"""Run configuration, certificates, allowlist and the ClientApp's decline paths (no processes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import (
    Code,
    EvaluateIns,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy

from semiofed.client.allowlist import OUTBOX_FILE, ForbiddenContent, check_reply, param_specs
from semiofed.client.app import SiteClient, allowlist_mod
from semiofed.privacy.approval import approve
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.server.certs import ConsortiumPaths, add_site_key, init_consortium
from semiofed.shared.cli import main
from semiofed.shared.errors import SemioFedError
from semiofed.shared.run_config import (
    DEFAULTS,
    FIELDS,
    RunConfig,
    RunConfigError,
    encode_payload,
    load_run_config,
)
from tests.federation_helpers import TINY, synth_consortium
from tests.ledger_helpers import new_ledger, officer

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_validate():
    for name in ("demo.toml", "consortium.toml"):
        cfg = load_run_config(ROOT / "configs" / name)
        fields = cfg.approval_fields()
        assert len(fields["architecture_hash"]) == 64
        assert fields["run_config"] == cfg.as_dict()  # the whole configuration is approved


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nrounds = 0\n", encoding="utf-8")
    with pytest.raises(RunConfigError, match=r"bad\.toml: \[federation\] rounds: must be >= 1"):
        load_run_config(bad)
    bad.write_text("[privacy]\nnoise-multipler = 1.0\n", encoding="utf-8")
    with pytest.raises(RunConfigError, match=r"\[privacy\] noise-multipler: unknown field"):
        load_run_config(bad)


def test_every_field_that_changes_the_computation_is_approved():
    base = RunConfig.parse(TINY).approval_fields()
    for table, key, value in (
        ("training", "test-fraction", 0.9),  # the server cannot move patients into the test set
        ("training", "val-fraction", 0.2),
        ("training", "learning-rate", 0.5),
        ("federation", "seed", 7),
        ("privacy", "eval-noise-multiplier", 0.1),
        ("strategy", "server-momentum", 0.9),
    ):
        changed = RunConfig.parse({**TINY, table: {**TINY.get(table, {}), key: value}})
        assert changed.approval_fields() != base, key
    with pytest.raises(RunConfigError, match="fraction-train: must be 1 with central DP"):
        RunConfig.parse({"central-dp": {"enabled": True}, "federation": {"fraction-train": 0.5}})


def test_one_field_table_sets_defaults_window_config_and_cli_defaults(tmp_path):
    """Every field is in FIELDS with its default and approval status; the TOML sets the
    WindowConfig; `site train`'s --lr/--delta defaults are the run configuration's."""
    from semiofed.client.train_cli import register
    from semiofed.shared.windows import WindowConfig

    assert {(f.table, f.key) for f in FIELDS} == {
        (t, k) for t, keys in DEFAULTS.items() for k in keys
    } and all(f.approved for f in FIELDS)
    assert "window" not in RunConfig.parse(TINY).as_dict()  # earlier approvals stay valid
    assert RunConfig.parse(TINY).window == WindowConfig()
    path = tmp_path / "w.toml"
    path.write_text("[window]\nseconds = 4\nhop = 0.5\nrotate = false\n", encoding="utf-8")
    cfg = load_run_config(path)
    assert cfg.window == WindowConfig(seconds=4, hop=0.5, rotate=False)
    assert cfg.approval_fields() != RunConfig.parse({}).approval_fields()
    path.write_text("[window]\nhop = 0\n", encoding="utf-8")
    with pytest.raises(RunConfigError, match=r"w\.toml: \[window\] hop: must be > 0"):
        load_run_config(path)
    parser = argparse.ArgumentParser().add_subparsers()
    register(parser)
    train = parser.choices["train"]
    assert (train.get_default("lr"), train.get_default("delta")) == (
        DEFAULTS["training"]["learning-rate"],
        DEFAULTS["privacy"]["delta"],
    )


def test_robust_strategy_with_secagg_is_refused():
    with pytest.raises(RunConfigError, match="secure aggregation hides"):
        RunConfig.parse({"federation": {"strategy": "fedmedian"}, "secagg": {"enabled": True}})
    cfg = RunConfig.parse({"federation": {"strategy": "fedmedian"}, "secagg": {"enabled": False}})
    assert cfg.federation.strategy == "fedmedian"


def test_init_consortium_chain_and_keys(tmp_path):
    paths = init_consortium(tmp_path / "certs", ["localhost", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert paths.fab_signing_key.stat().st_mode & 0o077 == 0
    assert paths.fab_signing_pub.read_text().startswith("ssh-ed25519 ")
    # the coordinator holds no site private key: each site makes its own pair …
    assert not [p for p in paths.root.rglob("*.key") if "site" in p.name]
    assert main(["site", "keygen", "--out", str(tmp_path / "site"), "--name", "site-01"]) == 0
    site_key, site_pub = tmp_path / "site" / "site-01.key", tmp_path / "site" / "site-01.pub"
    assert site_key.stat().st_mode & 0o077 == 0
    assert main(["site", "keygen", "--out", str(tmp_path / "site"), "--name", "site-01"]) == 2
    # … and sends only the public key, which the coordinator checks and registers
    assert isinstance(
        load_ssh_public_key(add_site_key(paths, "site-01", site_pub).read_bytes()),
        ec.EllipticCurvePublicKey,
    )
    with pytest.raises(SemioFedError, match="not an OpenSSH public key"):
        add_site_key(paths, "site-02", site_key)  # a private key is refused
    with pytest.raises(SemioFedError, match="must be ECDSA"):
        add_site_key(paths, "site-02", paths.fab_signing_pub)
    with pytest.raises(SemioFedError, match="already exists"):
        init_consortium(tmp_path / "certs")
    assert ConsortiumPaths(tmp_path / "certs").sites() == ["site-01"]


def _context(cfg: RunConfig, site_dir: Path, state: Path) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"site-name": "site-01", "data-dir": str(site_dir), "state-dir": str(state)},
        state=RecordDict(),
        run_config={"semiofed": encode_payload(cfg, out_dir="/nonexistent")},
    )


def _fit_message(cfg: RunConfig, arrays: list[np.ndarray]) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    # what a flwr-clientapp process sets before it handles a message
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 7
    ins = FitIns(ndarrays_to_parameters(arrays), {"server-round": 1})
    return Message(compat.fitins_to_recorddict(ins, True), dst_node_id=7, message_type="train")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = synth_consortium(tmp_path_factory.mktemp("units"), sites=1, patients=3)
    cfg = RunConfig.parse(TINY)
    from semiofed.client import site_task

    model = site_task.build_model(cfg)
    return root / "site-01", cfg, model, site_task.get_arrays(model)


def _decline_details(state: Path) -> list[str]:
    from semiofed.privacy.audit_trail import TRAIL_FILE, read_entries

    return [
        e["payload"]["detail"]
        for e in read_entries(state / TRAIL_FILE)
        if e["kind"] == "round_declined"
    ]


def test_allowlist_refuses_forbidden_key_and_records_allowed(tiny, tmp_path):
    site_dir, cfg, model, arrays = tiny
    ctx = _context(cfg, site_dir, tmp_path)
    specs = param_specs(model)

    def reply_with(metrics: dict, num_examples: int = 1):
        res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), num_examples, metrics)
        return lambda msg, c: Message(compat.fitres_to_recorddict(res, False), reply_to=msg)

    msg = _fit_message(cfg, arrays)
    for bad in (
        reply_with({"epsilon": 1.0, "patient-ids": "p1,p2"}),
        reply_with({"epsilon": 1.0, "num-patients": 3}),  # exact counts are not released
        reply_with({"decline-reason": "no such patient sub-01-002"}),  # free text
        reply_with({"epsilon": 1.0}, num_examples=7),  # num_examples is the constant 1
    ):
        out = allowlist_mod(msg, ctx, bad)
        assert out.has_error() and out.error.reason == "forbidden-content"
    assert not (tmp_path / OUTBOX_FILE).exists()
    assert "patient-ids" in _decline_details(tmp_path)[0]  # the detail stays local
    out = allowlist_mod(msg, ctx, reply_with({"epsilon": 1.0, "delta": 1e-3}))
    entry = json.loads((tmp_path / OUTBOX_FILE).read_text().splitlines()[0])
    assert entry["bytes"] > 0 and len(entry["sha256"]) == 64
    assert entry["records"]["configs"]["fitres.metrics"] == ["delta", "epsilon"]
    assert out.content is not None
    # a wrong shape, an extra array record and a raw metric record are refused as well
    bad = compat.fitres_to_recorddict(
        FitRes(Status(Code.OK, ""), ndarrays_to_parameters([a[..., :1] for a in arrays]), 3, {}),
        False,
    )
    with pytest.raises(ForbiddenContent, match="does not match parameter"):
        check_reply(bad, specs)
    extra = RecordDict({"embeddings": MetricRecord({"x": 1.0})})
    with pytest.raises(ForbiddenContent, match="not on the allowlist"):
        check_reply(extra, specs)
    with pytest.raises(ForbiddenContent):
        check_reply(RecordDict({"fitres.metrics": ConfigRecord({"raw": b"bytes"})}), specs)


ONLY_CODE = {"declined", "decline-reason", "site-name"}


def test_unapproved_configuration_is_declined(tiny, tmp_path):
    site_dir, cfg, _model, arrays = tiny
    client = SiteClient(_context(cfg, site_dir, tmp_path))
    res = client.fit(FitIns(ndarrays_to_parameters(arrays), {"server-round": 1}))
    assert res.num_examples == 0 and res.metrics["declined"] == 1
    assert res.metrics["decline-reason"] == "not-approved" and set(res.metrics) == ONLY_CODE
    # approving a *different* configuration does not help; the differences stay local
    other = RunConfig.parse({**TINY, "privacy": {**TINY["privacy"], "noise-multiplier": 0.3}})
    approve(other.approval_fields(), tmp_path, officer(tmp_path))
    res = client.fit(FitIns(ndarrays_to_parameters(arrays), {"server-round": 1}))
    assert res.num_examples == 0 and res.metrics["decline-reason"] == "not-approved"
    assert "noise-multiplier" in _decline_details(tmp_path)[-1]
    assert not (tmp_path / "privacy_ledger.json").exists() or not PrivacyLedger(tmp_path).history()


def test_over_budget_round_is_declined_before_training(tiny, tmp_path):
    site_dir, cfg, _model, arrays = tiny
    approve(cfg.approval_fields(), tmp_path, officer(tmp_path))
    new_ledger(tmp_path, 0.05, cfg.privacy.delta, cfg.privacy.accountant, site_dir)
    client = SiteClient(_context(cfg, site_dir, tmp_path))
    res = client.fit(FitIns(ndarrays_to_parameters(arrays), {"server-round": 2}))
    assert res.num_examples == 0 and set(res.metrics) == ONLY_CODE
    assert res.metrics["decline-reason"] == "over-budget"
    ev = client.evaluate(EvaluateIns(ndarrays_to_parameters(arrays), {}))
    assert ev.num_examples == 0 and ev.loss == 0.0 and set(ev.metrics) == ONLY_CODE
    assert ev.metrics["decline-reason"] == "over-budget"
    assert PrivacyLedger(tmp_path).history() == []  # nothing was trained or evaluated
    assert all("privacy budget exceeded" in d for d in _decline_details(tmp_path))


def test_exception_naming_a_patient_leaves_only_a_code(tiny, tmp_path):
    """The site's data folder is unusable: the exception text (which names the folder and
    would name a patient) stays in the audit trail; the reply carries the code."""
    _site_dir, cfg, _model, arrays = tiny
    approve(cfg.approval_fields(), tmp_path, officer(tmp_path))
    missing = tmp_path / "sub-01-007"
    client = SiteClient(_context(cfg, missing, tmp_path))
    res = client.fit(FitIns(ndarrays_to_parameters(arrays), {"server-round": 1}))
    assert res.metrics["decline-reason"] == "site-error" and set(res.metrics) == ONLY_CODE
    assert "sub-01-007" not in json.dumps(res.metrics) and res.status.message == "declined"
    assert "sub-01-007" in _decline_details(tmp_path)[-1]


def test_joined_round_releases_only_the_inventory(tiny, tmp_path):
    """Round 2: DP training, then the DP evaluation table of the received model, both in
    the ledger; the reply holds inventory keys only and num_examples = 1."""
    from semiofed.shared.noisy_eval import TABLE_SIZE, decode_table
    from semiofed.shared.release import ALLOWED_METRICS

    site_dir, cfg, _model, arrays = tiny
    approve(cfg.approval_fields(), tmp_path, officer(tmp_path))
    new_ledger(tmp_path, 50.0, cfg.privacy.delta, cfg.privacy.accountant, site_dir)
    client = SiteClient(_context(cfg, site_dir, tmp_path))
    res = client.fit(FitIns(ndarrays_to_parameters(arrays), {"server-round": 2}))
    assert res.num_examples == 1 and set(res.metrics) <= set(ALLOWED_METRICS)
    assert decode_table(res.metrics["eval-table"]).shape == (TABLE_SIZE,)
    runs = PrivacyLedger(tmp_path).load()["runs"]
    assert [r["purpose"] for r in runs] == [
        "federated round 2",
        "federated evaluation of the round-1 model",
    ]
    assert (runs[1]["sample_rate"], runs[1]["steps_counted"]) == (1.0, 1)
    assert runs[1]["noise_multiplier"] == cfg.privacy.eval_noise_multiplier
    assert res.metrics["epsilon"] == pytest.approx(PrivacyLedger(tmp_path).spent())
    check_reply(compat.fitres_to_recorddict(res, False), param_specs(_model))  # as sent


def test_clip_norm_other_than_the_approved_one_is_refused(tiny, tmp_path):
    from semiofed.client.app import clip_if_requested_mod
    from semiofed.privacy.approval import NotApproved

    site_dir, _cfg, _model, arrays = tiny
    cfg = RunConfig.parse({**TINY, "central-dp": {"enabled": True, "clip-norm": 2.0}})
    ctx = _context(cfg, site_dir, tmp_path)
    msg = _fit_message(cfg, arrays)
    msg.content.config_records["fitins.config"]["clipping_norm"] = 50.0
    with pytest.raises(NotApproved, match=r"approved one is 2\.0"):
        clip_if_requested_mod(msg, ctx, lambda m, c: m)
    out = allowlist_mod(msg, ctx, lambda m, c: clip_if_requested_mod(m, c, lambda m2, c2: m2))
    assert out.has_error() and out.error.reason == "not-approved"


def test_ending_a_process_also_ends_helpers_it_started_in_their_own_session(tmp_path):
    """Flower's SuperLink starts its SuperExec (and the ServerApp below it) in a session of
    their own, out of reach of a process-group kill; Consortium._end ends them too."""
    import os
    import subprocess
    import sys
    import time

    from semiofed.server.consortium import Consortium

    pid_file = tmp_path / "helper.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
         " start_new_session=True)\n"
         f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
         "time.sleep(120)\n"],
        start_new_session=True,
    )  # fmt: skip
    end = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < end, "helper did not start"
        time.sleep(0.05)
    helper = int(pid_file.read_text())
    Consortium._end(parent, grace=2.0)
    assert parent.poll() is not None
    for _ in range(100):  # SIGKILL is asynchronous; the orphan is reaped by init
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"helper {helper} survived")


class _Site(ClientProxy):
    """A site as the strategy sees it in aggregate_fit (only its id is read)."""

    def __init__(self, cid: str) -> None:
        super().__init__(cid)
        self.node_id = int(cid)

    get_properties = get_parameters = fit = evaluate = reconnect = None  # never called


def test_central_dp_noise_is_scaled_to_the_kept_sites_unweighted_mean():
    """Three sites asked, one declines: the mean of the two clipped updates gets noise of
    std σ·C/2 (not σ·C/3), and each update counts once whatever the site's size."""
    from semiofed.server.strategies import make_strategy

    cfg = RunConfig.parse(
        {**TINY, "secagg": {"enabled": False},
         "central-dp": {"enabled": True, "noise-multiplier": 1.0, "clip-norm": 2.0}}
    )  # fmt: skip
    zeros = [np.zeros(20000, np.float32)]
    rec, strategy = make_strategy(cfg, 3, ndarrays_to_parameters(zeros))
    updates = {"1": 1.0, "2": 3.0}  # both within the clip norm per coordinate block
    results = [
        (_Site(cid), FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([z + v for z in zeros]),
                            1, {"site-name": f"site-0{cid}"}))
        for cid, v in updates.items()
    ] + [
        (_Site("3"), FitRes(Status(Code.OK, "declined"), ndarrays_to_parameters(zeros), 0,
                            {"declined": 1, "decline-reason": "over-budget", "site-name": "site-03"}))
    ]  # fmt: skip
    params, _ = strategy.aggregate_fit(1, results, [])
    (agg,) = parameters_to_ndarrays(params)
    assert agg.mean() == pytest.approx(2.0, abs=0.05)  # unweighted mean of 1 and 3
    assert agg.std() == pytest.approx(1.0 * 2.0 / 2, rel=0.05)
    assert rec.rounds[1]["declined"] == {"site-03": "over-budget"}


def test_server_momentum_steps_the_aggregate_with_heavy_ball_momentum():
    """FedAvgM on the (already privatised) mean: w ← w + η·v, v ← β·v + (mean − w); the
    velocity carries over between rounds, and plain fedavg is the η = 1, β = 0 case."""
    from semiofed.server.strategies import make_strategy

    cfg = RunConfig.parse(
        {**TINY, "secagg": {"enabled": False},
         "strategy": {"server-learning-rate": 0.5, "server-momentum": 0.9}}
    )  # fmt: skip
    w = [np.zeros(4, np.float32)]
    _, strategy = make_strategy(cfg, 2, ndarrays_to_parameters(w))

    def round_(r: int, current: list[np.ndarray], site_values: tuple[float, float]) -> np.ndarray:
        strategy.configure_fit(r, ndarrays_to_parameters(current), _Manager())
        results = [
            (_Site(str(i)), FitRes(Status(Code.OK, "ok"),
                                   ndarrays_to_parameters([current[0] + v]), 1,
                                   {"site-name": f"site-0{i}"}))
            for i, v in enumerate(site_values, start=1)
        ]  # fmt: skip
        params, _ = strategy.aggregate_fit(r, results, [])
        return parameters_to_ndarrays(params)[0]

    w1 = round_(1, w, (1.0, 3.0))  # mean change 2: v = 2, w = 0 + 0.5·2
    np.testing.assert_allclose(w1, 1.0)
    w2 = round_(2, [w1], (0.0, 2.0))  # mean change 1: v = 0.9·2 + 1 = 2.8, w = 1 + 1.4
    np.testing.assert_allclose(w2, 2.4, rtol=1e-6)


class _Manager:
    """The client manager configure_fit samples from: two sites."""

    def num_available(self) -> int:
        return 2

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion=None):
        return [_Site("1"), _Site("2")][:num_clients]


def test_the_clientapp_finds_the_hash_of_the_fab_it_runs(tmp_path, monkeypatch):
    """Flower installs a FAB in FLWR_HOME/apps/… and puts that folder on sys.path; the
    ClientApp rebuilds the FAB from it (Flower's builds are deterministic) and gets its hash."""
    from flwr.cli.install import install_from_fab

    from semiofed.shared.fab import build_fab, fab_hash, running_fab_hash, write_app_dir

    assert running_fab_hash() is None  # no FAB: simulation, in-process tests
    fab = build_fab()
    assert fab_hash(build_fab()) == fab_hash(fab)
    other = write_app_dir(tmp_path / "other", clientapp="rogue:app")
    for bundle in (fab, build_fab(other)):
        installed = install_from_fab(bundle, tmp_path / fab_hash(bundle), skip_prompt=True)
        monkeypatch.syspath_prepend(str(installed))
        assert running_fab_hash() == fab_hash(bundle)
