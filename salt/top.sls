base:
  '*':
    - common
  'roles:client':
    - match: grain
    - client
  'roles:router':
    - match: grain
    - router
  'roles:lb':
    - match: grain
    - lb
  'roles:server':
    - match: grain
    - server
