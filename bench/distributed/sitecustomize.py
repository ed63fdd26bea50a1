"""Loaded by every Python process of a device run (PYTHONPATH=bench/distributed:...).

ESPnet's ``--multiprocessing_distributed true`` starts each rank as a fresh *spawned*
interpreter, so what ``bench/espnet_device.py`` sets up in its own process (stand-ins for
ESPnet's unused optional imports, this repository on sys.path, our encoders registered)
must happen in every process: here. Two switches for the multi-GPU checks:

* ``IMLSPIKE_RANK_DUMP=dir``: after ESPnet's ``Trainer.run`` returns, each rank saves its
  IMLS statistics (``running_max``, ``num_batches_tracked``) to ``dir/rank<r>.pt``.
* ``IMLSPIKE_FORCE_FP16=1``: ESPnet 202511's ``--use_amp true`` autocasts to bfloat16 on
  a GPU that supports it (and keeps its GradScaler); this makes it float16, the classic
  AMP that the scaler exists for.
"""

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_spec = importlib.util.spec_from_file_location("_espnet_device", REPO / "bench/espnet_device.py")
_device = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_device)
sys.meta_path.append(_device.OptionalFinder())

import espnet_imlspike.autoload  # noqa: E402,F401  (what the installed .pth does)


class _PatchTrainer:
    """Meta-path finder that patches espnet2.train.trainer once it has been executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "espnet2.train.trainer":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                loader = spec.loader
                original_exec = loader.exec_module

                def exec_module(module, _exec=original_exec):
                    _exec(module)
                    _patch(module)

                loader.exec_module = exec_module
                return spec
        return None


def _patch(module):
    import torch

    if os.environ.get("IMLSPIKE_FORCE_FP16") == "1":
        module.autocast_args = dict(dtype=torch.float16)
    dump = os.environ.get("IMLSPIKE_RANK_DUMP")
    if not dump:
        return
    run = module.Trainer.run.__func__

    def dumping_run(cls, *args, **kwargs):
        result = run(cls, *args, **kwargs)
        model = kwargs.get("model", args[0] if args else None)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        stats = {k: v.detach().cpu() for k, v in model.state_dict().items()
                 if k.endswith(("running_max", "num_batches_tracked"))}
        Path(dump).mkdir(parents=True, exist_ok=True)
        torch.save(stats, Path(dump) / f"rank{rank}.pt")
        return result

    module.Trainer.run = classmethod(dumping_run)


sys.meta_path.insert(0, _PatchTrainer())
