{% from "map.jinja" import os with context %}

common-packages:
  pkg.installed:
    - pkgs: {{ os.pkgs | json }}

{% if grains['kernel'] == 'Linux' %}
# Answers from S reach the clients unencapsulated, and servers get their
# requests out of GRE but answer directly: strict reverse-path filtering
# would drop both. The effective value is max(all, interface), so the
# roles also set it per interface.
{% for scope in ['all', 'default'] %}
net.ipv4.conf.{{ scope }}.rp_filter:
  sysctl.present:
    - value: 0
{% endfor %}
{% endif %}
