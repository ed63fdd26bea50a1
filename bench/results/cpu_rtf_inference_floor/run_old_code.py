import sys, runpy
for name in [m for m in sys.modules if m.startswith("espnet_imlspike")]:
    del sys.modules[name]
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
sys.path.insert(0, "/tmp/old_wt")
import espnet_imlspike.neurons as n
assert n.__file__.startswith("/tmp/old_wt"), n.__file__
sys.argv = ["cpu_rtf.py"] + sys.argv[1:]
sys.path.insert(0, "/tmp/old_wt/bench")
runpy.run_path("/tmp/old_wt/bench/cpu_rtf.py", run_name="__main__")
