# Shared helpers for the install steps in .ci/deps.d. Sourced, not run.

# apt_install PKG... installs the Debian packages that are missing, running
# apt-get update at most once per make run.
apt_install() {
	local missing="" p
	for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
	[ -z "$missing" ] && return 0
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	echo "installing Debian packages:$missing"
	if [ ! -e "${CULVERT_APT_UPDATED:-/nonexistent}" ]; then
		$sudo apt-get update -qq
		[ -n "${CULVERT_APT_UPDATED:-}" ] && : >"$CULVERT_APT_UPDATED"
	fi
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}
