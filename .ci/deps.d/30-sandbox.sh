# The libcontainer sandbox: libseccomp-dev for libcontainer's seccomp (cgo,
# -tags seccomp); gcc builds libcontainer's nsenter and the static C programs
# of the hostile-function suite; runc and crun are the baselines bench/coldstart
# compares against; jq, sed and dash are what the quickstart's sandboxed
# functions run; user-mode-linux is the pure cgroup v2 kernel that
# TestPureCgroupV2 boots (this host's controllers are on cgroup v1).
apt_install libseccomp-dev gcc libc6-dev pkg-config runc crun jq sed dash user-mode-linux
