# Sourced by the scripts that run Python tools (fuzz.sh, check-deploy.sh).
#
# venv_with DIR REQUIREMENTS: makes DIR a virtualenv holding exactly the pins in REQUIREMENTS,
# or reuses it while those pins are unchanged (a stamp in DIR records them). Installs Debian's
# python3-venv when Python lacks venv support and this runs as root with apt-get; needs PyPI the
# first time. Returns non-zero, having said why, when it cannot.
venv_with() {
  local venv=$1 reqs=$2 python=${PYTHON:-python3}
  local stamp="$venv/.requirements"
  if [ -x "$venv/bin/python" ] && cmp -s "$reqs" "$stamp"; then
    return 0
  fi
  command -v "$python" >/dev/null 2>&1 || { echo "needs $python (3.9 or later) on PATH" >&2; return 1; }
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing python3-venv with apt-get" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
        { echo "could not install python3-venv" >&2; return 1; }
    else
      echo "$python cannot make virtualenvs; install python3-venv" >&2
      return 1
    fi
  fi
  echo "installing $reqs into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || { echo "could not create a virtualenv in $venv" >&2; return 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-virtualenv -r "$reqs" || { echo "pip could not install $reqs" >&2; return 1; }
  cp "$reqs" "$stamp"
}
