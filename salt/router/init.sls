{# The router: forwards S over one GRE tunnel per lb, spread by ECMP. #}
{% from "map.jinja" import os with context %}
{% set tb = pillar['testbed'] %}
{% set gres = [] %}
{% for lb in tb.lbs %}{% do gres.append(os.gre_prefix ~ loop.index0) %}{% endfor %}

include:
  - gre

{% if grains['kernel'] == 'Linux' %}
# Hash the 5-tuple (policy 1), not just the addresses, over the nexthops.
{% for key in ['net.ipv4.ip_forward', 'net.ipv4.fib_multipath_hash_policy'] %}
{{ key }}:
  sysctl.present:
    - value: 1
{% endfor %}

# Routes back to the clients, so that the ICMP "fragmentation needed"
# for packets too big for the tunnels reaches them (path MTU discovery).
{% for client in tb.clients %}
{% set c = tb.nodes[client] %}
router-route-{{ client }}:
  cmd.run:
    - name: ip route replace {{ c.c }}/32 via {{ c.v }} dev {{ tb.iface }}
    - unless: ip route show {{ c.c }}/32 | grep -qF 'via {{ c.v }}'
{% endfor %}

net.ipv4.conf.{{ tb.iface }}.rp_filter:
  sysctl.present:
    - value: 0

router-route-s:
  cmd.run:
    - name: >-
        ip route replace {{ tb.s_net }}
        {%- for gre in gres %} nexthop dev {{ gre }}{% endfor %}
    - unless: test "$(ip route show {{ tb.s_net }} | grep -c nexthop)" -eq {{ gres | length }}
    - require:
{% for lb in tb.lbs %}
      - cmd: gre-{{ lb }}
{% endfor %}

{% elif grains['kernel'] == 'FreeBSD' %}
# net.route.multipath needs ROUTE_MPATH (in GENERIC since 13.0; 1 is the
# default there). Forwarded packets pick a path by their mbuf flowid, which
# the receiving NIC's RSS hash provides; net.route.hash_outbound (read-only)
# only concerns locally originated packets, so it is not set here.
{% for key in ['net.inet.ip.forwarding', 'net.route.multipath'] %}
{{ key }}:
  sysctl.present:
    - value: 1
{% endfor %}

{% set routes = [] %}
{% for gre in gres %}{% do routes.append('svc' ~ loop.index0) %}{% endfor %}
{% for client in tb.clients %}{% do routes.append('c' ~ loop.index0) %}{% endfor %}

# Routes back to the clients, so that the ICMP "fragmentation needed"
# for packets too big for the tunnels reaches them (path MTU discovery).
{% for client in tb.clients %}
{% set c = tb.nodes[client] %}
rc-route_c{{ loop.index0 }}:
  sysrc.managed:
    - name: route_c{{ loop.index0 }}
    - value: "-host {{ c.c }} {{ c.v }}"

router-route-{{ client }}:
  cmd.run:
    - name: route add -host {{ c.c }} {{ c.v }}
    - unless: 'route -n get {{ c.c }} | grep -qF "gateway: {{ c.v }}"'
{% endfor %}
rc-static_routes:
  sysrc.managed:
    - name: static_routes
    - value: "{{ routes | join(' ') }}"

{% for gre in gres %}
rc-route_svc{{ loop.index0 }}:
  sysrc.managed:
    - name: route_svc{{ loop.index0 }}
    - value: "-net {{ tb.s_net }} -interface {{ gre }}"

router-route-s-{{ gre }}:
  cmd.run:
    - name: route add -net {{ tb.s_net }} -interface {{ gre }}
    - unless: netstat -rn -f inet | grep -qE '^{{ tb.s_net | replace('.', '\\.') }} .* {{ gre }}$'
    - require:
      - cmd: gre-{{ tb.lbs[loop.index0] }}
{% endfor %}
{% endif %}
