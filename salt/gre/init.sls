{# One GRE tunnel per lb, from this node's V address to the lb's, with this
   node's T address on it. Used by the router and the servers: FreeBSD gre(4)
   decapsulates only packets matching a tunnel's src/dst pair, so a server
   needs one per lb; Linux does the same for symmetry. #}
{% from "map.jinja" import os with context %}
{% set tb = pillar['testbed'] %}
{% set me = tb.nodes[grains['id']] %}

gre-kmod:
  kmod.present:
    - name: {{ os.gre_kmod }}
    - persist: true

{% for lb in tb.lbs %}
{% set gre = os.gre_prefix ~ loop.index0 %}
{% set remote = tb.nodes[lb].v %}
{% if grains['kernel'] == 'Linux' %}
gre-{{ lb }}:
  cmd.run:
    - name: >-
        ip tunnel add {{ gre }} mode gre local {{ me.v }} remote {{ remote }} ttl 64 &&
        ip addr add {{ me.t }}/32 dev {{ gre }} &&
        ip link set {{ gre }} up
    - unless: ip link show {{ gre }}
    - require:
      - kmod: gre-kmod

net.ipv4.conf.{{ gre }}.rp_filter:
  sysctl.present:
    - value: 0
    - require:
      - cmd: gre-{{ lb }}

{% elif grains['kernel'] == 'FreeBSD' %}
rc-create_args_{{ gre }}:
  sysrc.managed:
    - name: create_args_{{ gre }}
    - value: "tunnel {{ me.v }} {{ remote }}"

rc-ifconfig_{{ gre }}:
  sysrc.managed:
    - name: ifconfig_{{ gre }}
    - value: "inet {{ me.t }}/32 up"

gre-{{ lb }}:
  cmd.run:
    - name: >-
        ifconfig {{ gre }} create tunnel {{ me.v }} {{ remote }} &&
        ifconfig {{ gre }} inet {{ me.t }}/32 up
    - unless: ifconfig {{ gre }}
    - require:
      - kmod: gre-kmod
{% endif %}
{% endfor %}

{% if grains['kernel'] == 'FreeBSD' %}
{% set gres = [] %}
{% for lb in tb.lbs %}{% do gres.append(os.gre_prefix ~ loop.index0) %}{% endfor %}
rc-cloned_interfaces:
  sysrc.managed:
    - name: cloned_interfaces
    - value: "{{ gres | join(' ') }}"
{% endif %}
