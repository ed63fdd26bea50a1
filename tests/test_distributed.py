"""IMLS statistics under torch.distributed (gloo on CPU, two processes)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron


def _worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)
        neuron = InputAwareMultiLevelSpikeNeuron(4, 6, momentum=0.5).train()
        x = torch.rand(2, 5, 4) * (rank + 1)  # rank 1 sees larger inputs
        valid = torch.ones(2, 5, dtype=torch.bool)
        valid[1, 3:] = False
        spikes = neuron(x, valid)
        results[rank] = (x[valid].amax(0), neuron.running_max.clone(), spikes)
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_global_batch_maximum():
    manager = mp.Manager()
    results = manager.dict()
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, results), nprocs=2, join=True)
    local0, buffer0, spikes0 = results[0]
    local1, buffer1, _ = results[1]
    expected = torch.maximum(local0, local1)
    # both ranks hold the same buffer: the maximum over both ranks' valid frames
    assert torch.allclose(buffer0, expected) and torch.allclose(buffer1, expected)
    # and rank 0 fired with that global threshold, not its own
    torch.manual_seed(0)
    x0 = torch.rand(2, 5, 4)
    assert torch.equal(spikes0, torch.floor((x0 / expected * 6).clamp(0, 6)))


def _graph_sync_worker(rank, world_size, port, results):
    from espnet_imlspike.fast.ranks import agree_across_ranks, graphs_allowed_in_process_group
    from espnet_imlspike.neurons import rank_local_maxima

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("IMLSPIKE_DDP_GRAPHS", None)  # the default
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        neuron = InputAwareMultiLevelSpikeNeuron(3, 6).train()
        x = torch.full((1, 2, 3), float(rank + 1))
        with rank_local_maxima():  # the CUDA-graph warm-up: no collective, own maximum
            local = neuron.batch_max(x, None)
        shared = neuron.batch_max(x, None)
        # rank 0 has a longer batch, rank 1 more utterances and a pending backward
        agreed = agree_across_ranks(torch.device("cpu"), 4 + 2 * rank, 900 - 300 * rank,
                                    eager=rank == 1)
        # gloo cannot capture collectives into CUDA graphs: eager under it
        results[rank] = (local, shared, agreed, graphs_allowed_in_process_group())
    finally:
        dist.destroy_process_group()


def test_graph_warm_up_is_rank_local_and_ranks_agree_on_a_bucket():
    manager = mp.Manager()
    results = manager.dict()
    port = 29500 + (os.getpid() + 7) % 1000
    mp.spawn(_graph_sync_worker, args=(2, port, results), nprocs=2, join=True)
    for rank in (0, 1):
        local, shared, agreed, allowed = results[rank]
        assert torch.equal(local, torch.full((3,), float(rank + 1)))
        assert torch.equal(shared, torch.full((3,), 2.0))
        # every rank: the largest batch (6), the longest input (900), eager (rank 1's)
        assert agreed == (6, 900, True)
        assert allowed is False


def test_graphs_under_nccl_are_on_by_default_and_can_be_turned_off(monkeypatch):
    from espnet_imlspike.fast import ranks

    monkeypatch.setattr(ranks.dist, "get_backend", lambda: "nccl")
    monkeypatch.delenv("IMLSPIKE_DDP_GRAPHS", raising=False)
    assert ranks.graphs_allowed_in_process_group()
    monkeypatch.setenv("IMLSPIKE_DDP_GRAPHS", "0")
    assert not ranks.graphs_allowed_in_process_group()
