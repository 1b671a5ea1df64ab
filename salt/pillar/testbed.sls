# The testbed's addressing plan (README "Testing"). It must match the
# namespace testbed: change both together.
#   V 192.168.137.0/24  the VMs' shared network
#   T 172.16.0.0/22     addresses inside GRE
#   C 10.0.0.0/24       client source addresses (alias on the client's V iface)
#   S 10.1.0.0/24       service VIPs
{% set nodes = {
    'router-1': {'v': '192.168.137.1', 't': '172.16.0.1'},
    'client-1': {'v': '192.168.137.11', 'c': '10.0.0.1'},
    'client-2': {'v': '192.168.137.12', 'c': '10.0.0.2'},
    'lb-1': {'v': '192.168.137.21'},
    'lb-2': {'v': '192.168.137.22'},
    'server-1': {'v': '192.168.137.31', 't': '172.16.0.2'},
    'server-2': {'v': '192.168.137.32', 't': '172.16.0.3'},
    'server-3': {'v': '192.168.137.33', 't': '172.16.0.4'},
} %}
{% set servers = ['server-1', 'server-2', 'server-3'] %}
{% set targets = [] %}
{% for s in servers %}{% do targets.append(nodes[s]['v']) %}{% endfor %}
{% set health = {'port': 8080, 'path': '/healthz'} %}
{% set default_iface = {'FreeBSD': 'vtnet0'}.get(grains['kernel'], 'eth0') %}
{% set me = nodes.get(grains['id'], {}) %}
testbed:
  # Per node: v (V address), t (T address), c (C address) and, optionally,
  # iface (the V interface; default eth0 on Linux, vtnet0 on FreeBSD).
  nodes: {{ nodes | json }}
  routers: [router-1]
  clients: [client-1, client-2]
  lbs: [lb-1, lb-2]
  servers: {{ servers | json }}
  v_prefix: 24
  s_net: 10.1.0.0/24
  vip: 10.1.0.1
  http_port: 80
  health_port: {{ health.port }}
  health_path: {{ health.path }}
  iface: {{ me.get('iface', default_iface) }}

rusty_rail:
  # Where the lb role gets the source from. Replace with your clone or mirror.
  git_url: https://github.com/rusty-rail/rusty_rail.git
  git_rev: main
  src_dir: /usr/local/src/rusty_rail
  # Extra `cargo build --release` arguments per kernel: FreeBSD has no
  # XDP, so it builds the netmap backend alone (README "The netmap backend").
  cargo_args:
    Linux: ''
    FreeBSD: --no-default-features --features netmap
  # Written as-is to the env file (README "Configuration").
  env:
    RR_DEVICE: {{ me.get('iface', default_iface) }}
    RR_API: {{ me.get('v', '127.0.0.1') }}:9180
    RR_TARGET_IPS: "{{ targets | join(';') }}"
    # PLACEHOLDER: operators must replace it with one secret key shared by
    # every lb (openssl rand -hex 16), e.g. from a pillar file kept out of
    # the repository. This value is not hex, so rusty_rail refuses to start
    # (exit 2, naming RR_HASH_KEY) until it is replaced.
    RR_HASH_KEY: REPLACE-ME-with-openssl-rand-hex-16
    RR_HEALTH_PORT: {{ health.port }}
    RR_HEALTH_PATH: {{ health.path }}
{%- if grains['kernel'] == 'FreeBSD' %}
    RR_BACKEND: netmap
{%- endif %}
