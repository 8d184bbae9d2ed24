# Sourced by the competitor scripts beside it: install_pinned VENV PACKAGE VERSION COMMAND.
#
# Installs PACKAGE==VERSION from PyPI into bench/.work/VENV (a venv of its own, made with
# $PYTHON, else python3) unless that version is there already, so a second run only asks
# COMMAND its version. When the machine's pip constraints block the install, it tries once
# more with PIP_CONSTRAINT= and keeps a mark of that in the venv. Prints on stdout what the
# results should note (zero or more lines), then COMMAND --version's last line ("?" if it
# fails); everything else goes to stderr.

work="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.work"

installed_version() { # VENV PACKAGE: the version installed, or nothing
  [ -x "$1/bin/python" ] || return 0
  "$1/bin/python" -c 'import sys
from importlib.metadata import version
print(version(sys.argv[1]))' "$2" 2>/dev/null || true
}

install_pinned() {
  local venv="$work/$1" package=$2 version=$3 command=$4
  local lifted="$work/$1/installed-with-PIP_CONSTRAINT="
  if [ "$(installed_version "$venv" "$package")" != "$version" ]; then
    echo "installing $package $version into bench/.work/$1 (pip, PyPI)" >&2
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    local pip=("$venv/bin/python" -m pip install --quiet "$package==$version")
    if "${pip[@]}" >&2 2>"$venv/pip-first-try.log"; then
      rm -f "$lifted"
    else
      echo "the machine's pip constraints may block it: again with PIP_CONSTRAINT=" >&2
      if ! PIP_CONSTRAINT='' "${pip[@]}" >&2; then
        cat "$venv/pip-first-try.log" >&2
        return 1
      fi
      touch "$lifted"
    fi
  fi
  if [ -e "$lifted" ]; then
    echo "$package was installed with PIP_CONSTRAINT= (machine constraints lifted)."
  fi
  "$venv/bin/$command" --version 2>/dev/null | tail -n 1 || echo "?"
}
