import sys, torch, time
sys.path.insert(0,'bench')
from common import SIZES, build
import espnet_imlspike.neurons as N
torch.set_num_threads(2); torch.manual_seed(0)
t = build("transformer", SIZES["aishell"]).eval()
s = build("iml_imls_t6", SIZES["aishell"]).train()
with torch.no_grad():
    for _ in range(3): s(torch.randn(4,600,80), torch.tensor([600,550,500,450]))
s.eval()
new = N.multi_level_fire
def old(u, T):
    c = u.clamp(0.0, float(T)); return c + (torch.floor(c) - c).detach()
xs, l = torch.randn(1,1000,80), torch.tensor([1000])
res = {"transformer": [], "old": [], "new": []}
with torch.no_grad():
    N.multi_level_fire = old; a = s(xs,l)[0]
    N.multi_level_fire = new; b = s(xs,l)[0]
    print("equal outputs:", torch.equal(a, b))
    for r in range(15):
        for name in res:
            m = t if name == "transformer" else s
            if name != "transformer": N.multi_level_fire = old if name == "old" else new
            a = time.perf_counter(); m(xs, l); res[name].append(time.perf_counter() - a)
import statistics
med = {k: statistics.median(v) for k, v in res.items()}
print({k: round(v*1000, 1) for k, v in med.items()}, "old/T", round(med["old"]/med["transformer"], 3), "new/T", round(med["new"]/med["transformer"], 3))
