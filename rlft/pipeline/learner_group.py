"""`learner.num_workers` DeepSpeed ranks as Ray actors, driven like the single learner actor."""

from __future__ import annotations

import socket

import ray

from rlft.pipeline.process import set_torch_threads


class DeepSpeedWorker:
    """One rank: joins the learners' process group, then holds a DeepSpeedLearner."""

    def __init__(self, cfg):
        set_torch_threads(cfg)
        self.cfg = cfg
        self.learner = None

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a port free on it, for the process group's rendezvous (asked of rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def start(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        from rlft.learner.deepspeed_learner import DeepSpeedLearner, init_distributed  # imports deepspeed
        from rlft.models.loading import pick_device

        cuda = pick_device(self.cfg.learner.device).type == "cuda"
        init_distributed(rank, world_size, master_addr, master_port, cuda)
        self.learner = DeepSpeedLearner(self.cfg)

    def call(self, method: str, *args):
        return getattr(self.learner, method)(*args)


class _Method:
    """`group.<method>.remote(*args)`, as on an actor handle: an ObjectRef of rank 0's result."""

    def __init__(self, group: "LearnerGroup", name: str):
        self.group, self.name = group, name

    def remote(self, *args) -> ray.ObjectRef:
        return self.group.call(self.name, *args)


class LearnerGroup:
    """Data-parallel learner ranks with the single learner actor's call shape (`learner.train_step.remote(batch)`)."""

    COLLECTIVE = ("state_dict", "train_step", "save", "load")  # every rank runs them, in step
    RANK_ZERO = ("reference_logprobs", "peak_memory_bytes")  # the reference is whole on every rank; ranks alike

    def __init__(self, cfg, num_gpus: int):
        worker_cls = ray.remote(num_cpus=0, num_gpus=num_gpus)(DeepSpeedWorker)
        world_size = cfg.learner.num_workers
        self.workers = [worker_cls.remote(cfg) for _ in range(world_size)]
        addr, port = ray.get(self.workers[0].master_address.remote())
        ray.get([w.start.remote(rank, world_size, addr, port) for rank, w in enumerate(self.workers)])
        self._others: list[ray.ObjectRef] = []

    def call(self, method: str, *args) -> ray.ObjectRef:
        """Run `method` on rank 0, and on the others too if it is collective; rank 0's result.

        The other ranks' results are checked at the next call, so their errors surface (they
        finish together with rank 0: the method's collectives hold them in step).
        """
        ray.get(self._others)
        workers = self.workers if method in self.COLLECTIVE else self.workers[:1]
        refs = [w.call.remote(method, *args) for w in workers]
        self._others = refs[1:]
        return refs[0]

    def __getattr__(self, name: str) -> _Method:
        if name not in self.COLLECTIVE + self.RANK_ZERO:
            raise AttributeError(f"LearnerGroup has no method {name!r}")
        return _Method(self, name)
