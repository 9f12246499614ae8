"""Real Flower deployment engine on 127.0.0.1: SuperLink with TLS + SuperNode authentication,
three SuperNodes, the SemioFed ServerApp/ClientApp. Every process is started by the
Consortium object and ended by it (process groups it created)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from semiofed.client.keygen_cli import write_supernode_keypair
from semiofed.privacy.approval import TRUSTED_ENTITIES_FILE, approve
from semiofed.privacy.keys import generate_keypair
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.privacy.ledger_binding import init_ledger
from semiofed.server.app import PROGRESS_FILE
from semiofed.server.certs import add_site_key, init_consortium
from semiofed.server.code_signing import write_signing_key
from semiofed.server.consortium import Consortium
from semiofed.shared.errors import SemioFedError
from semiofed.shared.fab import build_fab, fab_hash, write_app_dir
from semiofed.shared.release import ALLOWED_METRICS
from semiofed.shared.run_config import RunConfig, encode_payload
from tests.federation_helpers import TINY, synth_consortium

pytestmark = pytest.mark.slow
SITES = ["site-01", "site-02", "site-03"]

MAIN = RunConfig.parse(TINY)  # SecAgg+, FedAvg, 2 rounds, min-nodes 2
ONE_ROUND = MAIN.updated({"federation": {"rounds": 1}, "secagg": {"enabled": False}})
# a DP parameter no privacy officer signed
UNAPPROVED = ONE_ROUND.updated({"privacy": {"noise-multiplier": 0.7}})
RESILIENT = RunConfig.parse(
    {
        **TINY,
        "federation": {
            **TINY["federation"],
            "rounds": 2,
            "min-nodes": 1,
            "strategy": "fedmedian",
            # A site that died is answered for by the SuperLink (node unavailable) once its
            # heartbeat lapses; the timeout only bounds a stuck round, so load never drops a
            # live site from a round.
            "round-timeout": 600.0,
        },
        "secagg": {"enabled": False},
    }
)


def _start_consortium(root: Path) -> Iterator[tuple[Consortium, Path]]:
    data = synth_consortium(root / "data", sites=3, patients=3)
    certs = init_consortium(root / "certs")  # holds no site private key
    write_supernode_keypair(root / "intruder.key", root / "intruder.pub")  # never registered
    signer = certs.fab_signing_pub.read_text()
    code = fab_hash(build_fab())
    with Consortium(root / "work", certs) as c:
        c.start_superlink()
        for s in SITES:
            state = root / "state" / s
            key = root / "sites" / s / f"{s}.key"  # made at the site; only the .pub is sent
            write_supernode_keypair(key, key.with_suffix(".pub"))
            add_site_key(certs, s, key.with_suffix(".pub"))
            officer = generate_keypair(root / "officers" / f"{s}.pem")
            for cfg in (MAIN, RESILIENT, ONE_ROUND):  # never UNAPPROVED
                approve(cfg.approval_fields(), state, officer, fab_hash=code, signer=signer)
            # site-03 has (almost) no budget left: it must decline, not crash
            budget = 0.05 if s == "site-03" else TINY["privacy"]["site-budget"]
            init_ledger(state, data / s, root / "officers" / f"{s}.pem", budget, 1e-3, "rdp")
            c.register(s)
            c.add_site(s, data / s, state, key)
            c.start_supernode(s)
        c.wait_connected(3)
        yield c, root


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    yield from _start_consortium(tmp_path_factory.mktemp("federation"))


class TestSupernodeCrash:
    """The longest test (Flower's 30-s heartbeats), with a consortium of its own: a class,
    so that pytest-xdist's ``--dist loadscope`` (``make test``) may run it on the other worker
    beside the module's other tests (tests/conftest.py starts it first)."""

    @pytest.fixture(scope="class")
    def own_consortium(self, tmp_path_factory):
        yield from _start_consortium(tmp_path_factory.mktemp("federation-crash"))

    def test_killed_supernode_rejoins_and_restarted_serverapp_resumes(self, own_consortium):
        c, root = own_consortium
        out = root / "run-resilient"
        payload = {"semiofed": encode_payload(RESILIENT, out_dir=str(out))}
        ledger = root / "state" / "site-02" / "privacy_ledger.json"

        def site02_training() -> bool:
            return ledger.exists() and len(json.loads(ledger.read_text())["runs"]) > 0

        run_id = c.submit(payload)
        _wait(site02_training, 300, "site-02 to start training in round 1")
        c.kill_supernode("site-02")  # mid-round crash of a hospital
        c.start_supernode("site-02")  # it comes back (same key, same node id)
        progress = out / PROGRESS_FILE
        _wait(
            lambda: progress.exists() and len(json.loads(progress.read_text())["rounds"]) >= 1,
            600,
            "round 1",
        )
        c.stop_run(run_id)  # the ServerApp goes away after round 1 …
        c.wait_run(run_id, 60)  # the run stops
        run_id2 = c.submit(payload)  # … and a new one resumes from the checkpoint
        status = c.wait_run(run_id2, timeout=600, progress=progress)
        assert status["status"] == "finished:completed", status
        run = _run_json(out)
        assert run["resumed_after_round"] >= 1
        rounds = {r["round"]: r for r in run["rounds"]}
        assert sorted(rounds) == [1, 2]
        assert "site-02" not in rounds[1]["sites"] and "site-01" in rounds[1]["sites"]
        assert rounds[1]["aggregated"]  # min-nodes = 1: round 1 completed without site-02
        assert "site-02" in rounds[2]["sites"]  # site-02 rejoined


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def test_supernode_without_registered_key_is_rejected(consortium):
    c, root = consortium
    state = root / "state" / "intruder"
    state.mkdir(parents=True, exist_ok=True)  # it trusts the consortium's FAB signer, too
    trusted = root / "state" / "site-01" / TRUSTED_ENTITIES_FILE
    (state / TRUSTED_ENTITIES_FILE).write_text(trusted.read_text())
    c.add_site("intruder", root / "data" / "site-01", state)
    proc = c.start_supernode("intruder", key_path=root / "intruder.key")
    proc.wait(timeout=90)  # the SuperLink refuses to activate it and it gives up
    log = (c.logs / "supernode-intruder.log").read_text(errors="replace")
    assert proc.returncode != 0
    assert "Failed to activate SuperNode" in log, log[-2000:]
    assert len(c.wait_connected(3)) == 3  # still only the three registered hospitals


def test_register_command_registers_a_new_site(consortium):
    c, root = consortium
    certs = root / "certs"
    write_supernode_keypair(root / "site-04.key", root / "site-04.pub")  # at the site
    semiofed = str(Path(sys.executable).parent / "semiofed")
    added = subprocess.run(
        [semiofed, "server", "add-site", "site-04", str(root / "site-04.pub"), "--certs", str(certs)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    res = subprocess.run(
        [semiofed, "server", "register", "site-04", "--certs", str(certs), "--superlink", c.address],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    node_id = res.stdout.split("registered as node")[1].strip()
    nodes = {n["node-id"]: n for n in c.flwr("supernode", "list", "local")["nodes"]}
    assert nodes[node_id]["status"] == "registered"  # known, not yet online


def _unfilled(value: object, where: str = "card") -> list[str]:
    """The card fields that came out empty (None, "", {}, []), but where empty is a value
    (no declined rounds; no explanations: `registry explain` is a step of its own; no
    federated calibration or anomaly model: the demo's releases after the run); the copied
    documents (architecture, configuration) only whole."""
    if where.endswith(
        (".declined_rounds", "card.explanations", "card.calibration", "card.anomaly")
    ):
        return []
    if value is None or value in ("", {}, []):
        return [where]
    if where.endswith((".architecture", ".configuration")):
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _unfilled(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _unfilled(v, f"{where}[{i}]")]
    return []


def _label_a_queued_event(root: Path, site: str) -> tuple[str, int]:
    """What a clinician does before the next run, with `site review`'s code: an event in the
    site's review queue (queued as `site analyze` queues a flagged event; here a stretch of a
    training patient's recording) labelled with a seizure type under that patient. Returns
    the patient and the site's number of training patients."""
    from semiofed.client import site_task
    from semiofed.client.analyze_cli import apply_review, enqueue, known_patients

    data, state = root / "data" / site, root / "state" / site
    train = site_task.load_site(data, MAIN).train
    patient = train[0].patient
    rec = next((data / patient).glob("*_keypoints.npz"))
    event = {"id": "E1", "onset_s": 4.0, "offset_s": 18.0, "predicted_type": "automatisms",
             "prediction_set": ["automatisms", "f2b"], "aberrant": {"score": 3.0, "threshold": 2.0}}  # fmt: skip
    assert enqueue(state, rec, "bed3", patient, [event], root / "report.json") == 1
    apply_review(state, "bed3-E1", "hyperkinetic", None, known_patients(data))
    return patient, len(train)


def test_three_supernodes_run_and_over_budget_site_declines(consortium):
    c, root = consortium
    out = root / "run-main"
    patient, n_train = _label_a_queued_event(root, "site-01")
    run_id = c.submit({"semiofed": encode_payload(MAIN, out_dir=str(out), data="synthetic")})
    status = c.wait_run(run_id, timeout=900, progress=out / PROGRESS_FILE)
    assert status["status"] == "finished:completed", status
    run = _run_json(out)
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert run["participating_sites"] == ["site-01", "site-02"]
    for r in run["rounds"]:
        assert r["aggregated"] and not r["failure_reasons"]
        assert r["declined"]["site-03"] == "over-budget"  # the code, nothing else
        assert r["federated_eval"]["eval-sites"] >= 2
        assert 0 <= r["federated_eval"]["auroc-seizure"] <= 1  # from the noisy tables
    assert run["rounds"][-1]["evaluate_declined"] == {"site-03": "over-budget"}
    assert set(run["rounds"][-1]["evaluate_sites"]) == {"site-01", "site-02"}
    eps = [p["epsilon"] for p in run["site_privacy"]["site-01"]]
    assert eps[0] < eps[1]  # cumulative across rounds
    assert run["site_privacy"]["site-01"][0]["privacy_unit"] == "patient"
    assert (out / "model.safetensors").stat().st_size > 0
    model_cfg = json.loads((out / "model_config.json").read_text())
    assert model_cfg["model"]["embed_dim"] == 16 and model_cfg["architecture_hash"]
    # the run directory is what the registry publishes and `site analyze` loads
    from semiofed.server.registry.cards import build_card
    from semiofed.shared.model_folder import load_model_folder

    card = build_card(out)
    assert _unfilled(card) == []  # the run record's writer and the card's reader agree
    training = card["training"]
    assert card["name"] == out.name and training["strategy"] == "fedavg"
    assert training["run_id"] == str(run["flower_run_id"]) and training["started_at"]
    assert training["finished_at"] and [m["round"] for m in card["metrics"]] == [1, 2]
    site01 = card["privacy"]["per_site"]["site-01"]
    assert (site01["privacy_unit"], site01["accountant"], site01["delta"]) == (
        "patient",
        "rdp",
        1e-3,
    )
    assert site01["epsilon_final"] == pytest.approx(eps[-1])
    load_model_folder(out, "cpu")
    outbox = (root / "state" / "site-01" / "outbox.jsonl").read_text().splitlines()
    # 4 SecAgg+ stages per round (the train reply also evaluates the model received), and
    # one evaluate message for the final model
    assert len(outbox) == 2 * 4 + 1
    # the site featurised each recording once, into its own state folder, for all messages:
    # its recordings and the labelled event's, which joined the rounds as part of its patient
    # (the same number of privacy units: sample rate batch-size / training patients)
    recordings = list((root / "data" / "site-01").rglob("*_keypoints.npz"))
    reviewed = list((root / "state" / "site-01" / "review" / "data").rglob("*_keypoints.npz"))
    assert [r.parent.name for r in reviewed] == [patient]
    assert len(list((root / "state" / "site-01" / "feature-cache").glob("*.npz"))) == len(
        recordings
    ) + len(reviewed)
    # the privacy officer's signed trail holds the same: rounds, replies, budget, declines
    kinds = _trail_kinds(root / "state" / "site-01")
    assert kinds.count("round_joined") == 2 and kinds.count("budget_state") == 3
    assert kinds.count("message_sent") == len(outbox)
    assert _trail_kinds(root / "state" / "site-03").count("round_declined") == 3
    # every reply of every site holds inventory keys only; the over-budget site's replies
    # (train and evaluate) nothing but the decline code
    for s in SITES:
        for metrics in _sent_metric_keys(root / "state" / s):
            assert metrics <= set(ALLOWED_METRICS), (s, metrics)
            if s == "site-03":
                assert metrics <= {"declined", "decline-reason", "site-name"}, metrics
    runs = PrivacyLedger(root / "state" / "site-01").load()["runs"]
    assert runs[0]["sample_rate"] == pytest.approx(MAIN.training.batch_size / n_train)
    purposes = [r["purpose"] for r in runs]
    assert purposes == [
        "federated round 1",
        "federated round 2",
        "federated evaluation of the round-1 model",  # inside round 2's train message
        "federated evaluation of the final model",
    ]


def _supernode_logs(c: Consortium) -> dict[str, str]:
    return {s: (c.logs / f"supernode-{s}.log").read_text(errors="replace") for s in SITES}


@pytest.mark.parametrize(
    ("how", "refusal"),
    [
        ("unsigned", "App verification is not supported"),  # no verification record at all
        ("foreign key", "FAB verification failed"),  # signed, by a key no officer trusts
    ],
)
def test_supernodes_refuse_a_fab_no_trusted_signer_signed(consortium, how, refusal):
    """The approved FAB, unsigned or signed by another key: Flower refuses it at every
    SuperNode (``--trusted-entities``) before any ClientApp runs; the run is then stopped."""
    c, root = consortium
    foreign = root / "foreign-signing.key"
    if not foreign.exists():
        write_signing_key(foreign, foreign.with_suffix(".pub"))
    outboxes = {s: root / "state" / s / "outbox.jsonl" for s in SITES}
    before = {s: p.read_text() if p.exists() else "" for s, p in outboxes.items()}
    seen = {s: log.count(refusal) for s, log in _supernode_logs(c).items()}
    payload = {"semiofed": encode_payload(ONE_ROUND, out_dir=str(root / f"run-{how}"))}
    if how == "unsigned":
        run_id = c.submit(payload, signed=False)
    else:
        run_id = c.submit(payload, signing_key=foreign)
    _wait(
        lambda: all(log.count(refusal) > seen[s] for s, log in _supernode_logs(c).items()),
        120,
        f"every SuperNode to refuse the {how} FAB",
    )
    c.stop_run(run_id)
    c.wait_run(run_id, 60)
    for s in SITES:  # no ClientApp ran: nothing was sent, nothing recorded
        assert (outboxes[s].read_text() if outboxes[s].exists() else "") == before[s]


def test_unapproved_configuration_is_declined_by_every_site(consortium):
    c, root = consortium
    out = root / "run-unapproved"
    run_id = c.submit({"semiofed": encode_payload(UNAPPROVED, out_dir=str(out))})
    status = c.wait_run(run_id, 300, progress=out / PROGRESS_FILE)
    assert status["status"] == "finished:completed", status
    (r,) = _run_json(out)["rounds"]
    assert not r["sites"] and set(r["declined"]) == set(SITES)
    assert set(r["declined"].values()) == {"not-approved"}, r["declined"]


ROGUE_CLIENTAPP = """
from flwr.client import ClientApp
from semiofed.client.app import SiteClient, allowlist_mod


class Rogue(SiteClient):
    def fit(self, ins):  # a bug whose message names a patient
        raise ValueError("recording of patient sub-01-001 is corrupt")

    def evaluate(self, ins):
        res = super().evaluate(ins)
        res.metrics["patient-ids"] = "sub-01-001,sub-01-002"  # must never leave the site
        return res


app = ClientApp(client_fn=Rogue, mods=[allowlist_mod])
"""


def test_exceptions_and_forbidden_keys_leave_only_a_code(consortium):
    """A ClientApp whose training raises an exception naming a patient, and whose evaluate
    reply tries to add patient ids: the coordinator receives only the codes ``site-error``
    and ``forbidden-content``; the details stay in each site's trail."""
    c, root = consortium
    app_dir = write_app_dir(root / "rogue-app", clientapp="rogue:app")
    (app_dir / "rogue.py").write_text(ROGUE_CLIENTAPP, encoding="utf-8")
    outboxes = {s: root / "state" / s / "outbox.jsonl" for s in SITES}
    before = {s: p.read_text() if p.exists() else "" for s, p in outboxes.items()}
    out = root / "run-rogue"
    run_id = c.submit({"semiofed": encode_payload(ONE_ROUND, out_dir=str(out))}, app_dir=app_dir)
    status = c.wait_run(run_id, timeout=300, progress=out / PROGRESS_FILE)
    assert status["status"] == "finished:completed", status
    (r,) = _run_json(out)["rounds"]
    assert r["failure_reasons"] == ["site-error"] * 3 and not r["aggregated"]
    assert r["evaluate_failure_reasons"] == ["forbidden-content"] * 3
    assert not r.get("federated_eval")
    server_side = (out / "run.json").read_text() + (c.logs / "superlink.log").read_text(
        errors="replace"
    )
    assert "sub-01-001" not in server_side and "corrupt" not in server_side
    for s in SITES:
        assert outboxes[s].read_text() == before[s]  # nothing was sent but the error codes
        details = " ".join(_trail_details(root / "state" / s))
        assert "sub-01-001 is corrupt" in details and "patient-ids" in details


def _sent_metric_keys(state: Path) -> list[set[str]]:
    """Metric names of every reply in the site's outbox."""
    out = []
    for line in (state / "outbox.jsonl").read_text().splitlines():
        configs = json.loads(line)["records"]["configs"]
        for name in ("fitres.metrics", "evaluateres.metrics"):
            if name in configs:
                out.append(set(configs[name]))
    return out


def _trail_details(state: Path) -> list[str]:
    from semiofed.privacy.audit_trail import TRAIL_FILE, read_entries

    return [
        str(e["payload"].get("detail", ""))
        for e in read_entries(state / TRAIL_FILE)
        if e["kind"] == "round_declined"
    ]


def _trail_kinds(state: Path) -> list[str]:
    from semiofed.privacy.audit_trail import TRAIL_FILE, read_entries, site_public_key_path, verify
    from semiofed.privacy.keys import load_public_key

    trail = state / TRAIL_FILE
    assert verify(trail, load_public_key(site_public_key_path(state))).ok
    return [e["kind"] for e in read_entries(trail)]


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class TestWorkFolderReuse:
    """Its own class, so that the second pytest worker can run it beside the module."""

    def test_a_new_consortium_on_the_same_work_folder_registers_its_sites_again(self, tmp_path):
        """`make demo` twice: the second SuperLink must not find the first one's keys."""
        certs = init_consortium(tmp_path / "certs")
        key = tmp_path / "site-01.key"
        write_supernode_keypair(key, key.with_suffix(".pub"))
        add_site_key(certs, "site-01", key.with_suffix(".pub"))
        with Consortium(tmp_path / "work", certs) as c:
            c.start_superlink()
            c.register("site-01")
        with Consortium(tmp_path / "work", certs) as c:  # the old database: the key is in use
            c.start_superlink()
            with pytest.raises(SemioFedError, match="already in use"):
                c.register("site-01")
        with Consortium(tmp_path / "work", certs) as c:
            c.forget_superlink_state()
            c.start_superlink()
            assert c.register("site-01") > 0
