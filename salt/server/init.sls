{# A server: decapsulates from every lb, holds the VIP on loopback, answers
   clients directly (DSR) and serves HTTP with nginx. #}
{% from "map.jinja" import os with context %}
{% set tb = pillar['testbed'] %}
{% set me = tb.nodes[grains['id']] %}
{% set iface = tb.iface %}

include:
  - gre

{% if grains['kernel'] == 'Linux' %}
# The VIP is on lo: answer ARP only for addresses on the asking interface,
# and never use the VIP as an ARP source.
{% for key, value in {'arp_ignore': 1, 'arp_announce': 2} | dictsort %}
net.ipv4.conf.all.{{ key }}:
  sysctl.present:
    - value: {{ value }}
{% endfor %}

server-vip:
  cmd.run:
    - name: ip addr add {{ tb.vip }}/32 dev {{ os.loopback }}
    - unless: ip -o addr show dev {{ os.loopback }} | grep -qF ' {{ tb.vip }}/32 '

{% for client in tb.clients %}
{% set c = tb.nodes[client] %}
server-route-{{ client }}:
  cmd.run:
    - name: ip route replace {{ c.c }}/32 via {{ c.v }} dev {{ iface }}
    - unless: ip route show {{ c.c }}/32 | grep -qF 'via {{ c.v }} '
{% endfor %}

{% elif grains['kernel'] == 'FreeBSD' %}
{% set rc = {'ifconfig_' ~ os.loopback ~ '_alias0': 'inet ' ~ tb.vip ~ '/32'} %}
{% set routes = [] %}
{% for client in tb.clients %}
{% set c = tb.nodes[client] %}
{% do routes.append('c' ~ loop.index0) %}
{% do rc.update({'route_c' ~ loop.index0: '-host ' ~ c.c ~ ' ' ~ c.v}) %}
{% endfor %}
{% do rc.update({'static_routes': routes | join(' ')}) %}
{% for var, value in rc | dictsort %}
rc-{{ var }}:
  sysrc.managed:
    - name: {{ var }}
    - value: "{{ value }}"
{% endfor %}

server-vip:
  cmd.run:
    - name: ifconfig {{ os.loopback }} inet {{ tb.vip }}/32 alias
    - unless: ifconfig {{ os.loopback }} | grep -qF 'inet {{ tb.vip }} '

{% for client in tb.clients %}
{% set c = tb.nodes[client] %}
server-route-{{ client }}:
  cmd.run:
    - name: route add -host {{ c.c }} {{ c.v }}
    - unless: 'route -n get {{ c.c }} | grep -qF "gateway: {{ c.v }}"'
{% endfor %}

rc-nginx_enable:
  sysrc.managed:
    - name: nginx_enable
    - value: "YES"
    - require_in:
      - service: nginx
{% endif %}

nginx:
  pkg.installed: []
  file.managed:
    - name: {{ os.nginx_conf }}
    - source: salt://server/files/nginx.conf
    - template: jinja
    - require:
      - pkg: nginx
  service.running:
{% if grains['kernel'] == 'Linux' %}
    - enable: true
{% endif %}
    - require:
      - cmd: server-vip
    - watch:
      - file: nginx
