"""The plain Flower ClientApp of bench_federation: Flower's ``secaggplus_mod`` over a client
that sends back the parameters it received. No data, no torch, no SemioFed code: what a
round costs on the same SuperLink, SuperNodes, ServerApp and SecAgg+ settings when the
ClientApp does nothing. bench_federation copies this file into a Flower app directory."""

from __future__ import annotations

from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, Context, EvaluateIns, EvaluateRes, FitIns, FitRes, Status


class EchoClient(Client):
    def __init__(self, context: Context) -> None:
        self.name = str(context.node_config.get("site-name", ""))

    def fit(self, ins: FitIns) -> FitRes:
        return FitRes(Status(Code.OK, "ok"), ins.parameters, 1, {"site-name": self.name})

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        return EvaluateRes(Status(Code.OK, "ok"), 0.0, 1, {"site-name": self.name})


app = ClientApp(client_fn=EchoClient, mods=[secaggplus_mod])
