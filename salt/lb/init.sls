{# An lb: builds rusty_rail from source and runs it with the RR_ variables
   from pillar. #}
{% from "map.jinja" import os with context %}
{% set rr = pillar['rusty_rail'] %}

rusty_rail-build-packages:
  pkg.installed:
    - pkgs: {{ os.build_pkgs | json }}

{% if grains['kernel'] == 'Linux' %}
# Debian's own rustc is older than the crate's rust-version: use rustup,
# with the toolchain .ci/setup pins.
rusty_rail-toolchain:
  cmd.run:
    - name: curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
    - creates: {{ os.cargo }}
    - require:
      - pkg: rusty_rail-build-packages
{% endif %}

rusty_rail-source:
  git.latest:
    - name: {{ rr.git_url }}
    - rev: {{ rr.git_rev }}
    - target: {{ rr.src_dir }}
    - require:
      - pkg: rusty_rail-build-packages

# Runs on every highstate; cargo does nothing when the source is unchanged,
# and the install below changes (and restarts the service) only when the
# binary does.
rusty_rail-build:
  cmd.run:
    - name: {{ os.cargo }} build --release --locked {{ rr.cargo_args[grains['kernel']] }}
    - cwd: {{ rr.src_dir }}
    - require:
      - git: rusty_rail-source
{% if grains['kernel'] == 'Linux' %}
      - cmd: rusty_rail-toolchain
{% endif %}

/usr/local/bin/rusty_rail:
  file.managed:
    - source: {{ rr.src_dir }}/target/release/rusty_rail
    - mode: '0755'
    - require:
      - cmd: rusty_rail-build

rusty_rail-env:
  file.managed:
    - name: {{ os.env_file }}
    - source: salt://lb/files/rusty_rail.env
    - template: jinja
    - mode: '0600'

{% if grains['kernel'] == 'Linux' %}
/etc/systemd/system/rusty_rail.service:
  file.managed:
    - source: salt://lb/files/rusty_rail.service
    - template: jinja
    - require_in:
      - service: rusty_rail

{% elif grains['kernel'] == 'FreeBSD' %}
/usr/local/etc/rc.d/rusty_rail:
  file.managed:
    - source: salt://lb/files/rusty_rail.rc
    - template: jinja
    - mode: '0555'
    - require_in:
      - service: rusty_rail

rc-rusty_rail_enable:
  sysrc.managed:
    - name: rusty_rail_enable
    - value: "YES"
    - require_in:
      - service: rusty_rail
{% endif %}

rusty_rail:
  service.running:
{% if grains['kernel'] == 'Linux' %}
    - enable: true
{% endif %}
    - watch:
      - file: /usr/local/bin/rusty_rail
      - file: rusty_rail-env
