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

