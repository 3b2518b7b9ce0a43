"""guardproxy as a real Windows service: `guardproxy service ...`.

  sc.py       names, the sc.exe / netsh command lines and their answers (pure)
  logfile.py  the service's rotating log files, next to its config
  commands.py install, uninstall, start, stop, status, run
  host.py     the pywin32 service host, which serves with app.serve

Everything that decides something is a pure function or a plain class tested
on any platform; only host.py touches pywin32, imported where it is used.
"""
