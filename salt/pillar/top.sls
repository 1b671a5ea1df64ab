base:
  '*':
    - testbed
