{# A client: its C address on the V interface, and S reached via the router
   with C as the source. #}
{% set tb = pillar['testbed'] %}
{% set me = tb.nodes[grains['id']] %}
{% set router = tb.nodes[tb.routers[0]] %}
{% set iface = tb.iface %}

{% if grains['kernel'] == 'Linux' %}
client-c-address:
  cmd.run:
    - name: ip addr add {{ me.c }}/32 dev {{ iface }}
    - unless: ip -o addr show dev {{ iface }} | grep -qF ' {{ me.c }}/32 '

client-route-s:
  cmd.run:
    - name: ip route replace {{ tb.s_net }} via {{ router.v }} dev {{ iface }} src {{ me.c }}
    - unless: ip route show {{ tb.s_net }} | grep -qF 'src {{ me.c }}'
    - require:
      - cmd: client-c-address

net.ipv4.conf.{{ iface }}.rp_filter:
  sysctl.present:
    - value: 0

{% elif grains['kernel'] == 'FreeBSD' %}
# rc.conf for the next boot; the cmd states apply the same now.
# `-ifa` makes C the source address for S.
{% set rc = {
    'ifconfig_' ~ iface ~ '_alias0': 'inet ' ~ me.c ~ '/32',
    'static_routes': 'svc',
    'route_svc': '-net ' ~ tb.s_net ~ ' ' ~ router.v ~ ' -ifa ' ~ me.c,
} %}
{% for var, value in rc | dictsort %}
rc-{{ var }}:
  sysrc.managed:
    - name: {{ var }}
    - value: "{{ value }}"
{% endfor %}

client-c-address:
  cmd.run:
    - name: ifconfig {{ iface }} inet {{ me.c }}/32 alias
    - unless: ifconfig {{ iface }} | grep -qF 'inet {{ me.c }} '

client-route-s:
  cmd.run:
    - name: route add -net {{ tb.s_net }} {{ router.v }} -ifa {{ me.c }}
    - unless: 'route -n get {{ tb.s_net }} | grep -qF "gateway: {{ router.v }}"'
    - require:
      - cmd: client-c-address
{% endif %}
