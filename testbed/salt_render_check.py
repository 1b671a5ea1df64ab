"""Checks one rendered highstate (salt_render's helper; run with the venv's
python). Usage: salt_render_check.py CFGDIR HIGHSTATE_JSON ROLE

Fails (exit 1, one line per problem on stdout) when:
- the highstate is not a dict of states (a render error);
- the role's sls or common is missing from it (top file or grains wrong);
- a state function does not exist on this OS (salt renders a misspelled
  one happily), checked against sys.list_state_functions with the same
  grains, after checking that the OS's own modules really loaded;
- a sysrc value, or any `name`/`value` argument, is a boolean: a bare YES
  in YAML is True, and rc.conf would get "True";
- a jinja template of a file.managed state does not render.
"""

import json
import os
import sys
import tempfile

import salt.client
import salt.config

cfgdir, hs_path, role = sys.argv[1:4]
problems = []

with open(hs_path) as f:
    highstate = json.load(f).get("local")
if not isinstance(highstate, dict):
    print(f"render error: {highstate}")
    sys.exit(1)

opts = salt.config.minion_config(os.path.join(cfgdir, "minion"))
opts.update(
    file_client="local",
    file_roots={"base": ["salt"]},
    pillar_roots={"base": ["salt/pillar"]},
)
caller = salt.client.Caller(mopts=opts)
kernel = caller.cmd("grains.get", "kernel")

# The grains must make salt load the OS's own modules, or the function list
# below would be the wrong one.
providers = {
    "FreeBSD": {"pkg.install": "pkgng", "kmod.load": "freebsdkmod",
                "sysctl.assign": "freebsd_sysctl", "service.start": "freebsdservice",
                "sysrc.set": "sysrc"},
    "Linux": {"pkg.install": "aptpkg", "kmod.load": "kmod",
              "sysctl.assign": "linux_sysctl"},
}[kernel]
for fun, module in providers.items():
    got = caller.sminion.functions[fun].__module__.rsplit(".", 1)[-1] \
        if fun in caller.sminion.functions else None
    if got != module:
        problems.append(f"{fun} comes from {got}, not {module}: grains not applied?")

state_functions = set(caller.cmd("sys.list_state_functions"))

sls = {body.get("__sls__") for body in highstate.values()}
for want in ("common", role):
    if want not in sls:
        problems.append(f"sls {want} not in the highstate (got {sorted(sls)})")

templates = []
for sid, body in highstate.items():
    for module, chunk in body.items():
        if module.startswith("__"):
            continue
        funs = [c for c in chunk if isinstance(c, str)]
        args = {k: v for c in chunk if isinstance(c, dict) for k, v in c.items()}
        if len(funs) != 1:
            problems.append(f"{sid}: {module} has functions {funs}")
            continue
        fun = f"{module}.{funs[0]}"
        if fun not in state_functions:
            problems.append(f"{sid}: unknown state function {fun} on {kernel}")
        for key in ("name", "value"):
            if isinstance(args.get(key), bool):
                problems.append(f"{sid}: {fun} {key} is the boolean {args[key]} (quote \"YES\")")
        if module == "sysrc" and not isinstance(args.get("value"), str):
            problems.append(f"{sid}: sysrc value {args.get('value')!r} is not a string")
        if fun == "file.managed" and args.get("template") == "jinja":
            templates.append((sid, args.get("source")))

with tempfile.TemporaryDirectory() as tmp:
    for i, (sid, source) in enumerate(templates):
        out = os.path.join(tmp, str(i))
        try:
            ok = caller.cmd("cp.get_template", source, out) == out and os.path.exists(out)
        except Exception as e:  # a template error raises
            ok = False
            sid = f"{sid}: {e}"
        if not ok:
            problems.append(f"{sid}: template {source} does not render")

for p in problems:
    print(p)
sys.exit(1 if problems else 0)
